/* sublist.c — stub */
