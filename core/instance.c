/* instance.c — stub */
