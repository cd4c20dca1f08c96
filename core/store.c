/* store.c — stub */
