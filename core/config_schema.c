/* config_schema.c — stub */
