/* table.c — stub */
