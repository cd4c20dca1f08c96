/* host.c — stub */
