/* config.c — stub */
