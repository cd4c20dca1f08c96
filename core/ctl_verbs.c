/* ctl_verbs.c — stub */
