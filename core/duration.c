/* duration.c — stub */
