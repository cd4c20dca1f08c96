/* daemon.c — stub */
