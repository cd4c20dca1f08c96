/* exec.c — stub */
