/* sysroot.c — stub */
