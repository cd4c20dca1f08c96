/* subject.c — stub */
