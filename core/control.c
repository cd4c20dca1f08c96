/* control.c — stub */
