/* ctl_client.c — stub */
