/* metrics.c — stub */
