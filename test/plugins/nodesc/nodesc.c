/* nodesc.c — a shared object that is not an organism plugin: no descriptor symbol. */
__attribute__((visibility("default"))) int not_a_plugin(void);
int not_a_plugin(void) { return 42; }
