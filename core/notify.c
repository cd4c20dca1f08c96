/* notify.c — stub */
