/* yamlnode.c — stub */
