/* bus.c — stub */
