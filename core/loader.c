/* loader.c — stub */
