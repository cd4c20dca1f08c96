/* trust.h — may agentd let a file decide what it runs? One set of rules for plugin
 * files, the config file and the programs of agent.commands (loader.c, config.c).
 *
 * The path is walked one component at a time from `/` with O_PATH|O_NOFOLLOW, each
 * directory checked through its descriptor before anything is taken from it, symlinks
 * resolved by hand (the directory holding a link is checked, then everything on the
 * way to its target), so nothing can be swapped between the check and the use:
 *   - every directory on the way and the file itself belong to root (or, when agentd
 *     does not run as root, to root or agentd's own euid, so the unprivileged test
 *     suite still checks something meaningful);
 *   - the file is a regular file (a directory for trust_check_dir) that neither its
 *     group nor others may write;
 *   - the directory holding the file (or the last link to it) is not writable by group
 *     or others, sticky or not: a sticky /tmp is refused as a plugin or config folder;
 *   - a directory higher up that group or others may write is refused too, except a
 *     sticky one (like /tmp) above an entry owned by root (or euid): the sticky bit
 *     forbids everyone else to rename or remove that entry, so it cannot be swapped;
 *     this lets a root-owned checkout or a 0700 mkdtemp folder under /tmp be used.
 * An entry missing from a directory that group or others may write is refused too
 * (-EPERM, not -ENOENT): whoever may write there could create it later.
 * Refusals return -EPERM; a wrong file type -EINVAL (a FIFO is never opened, so
 * nothing blocks); a missing component its errno. ret_reason, when not NULL, receives a
 * malloc'd sentence naming the path at fault (on failure only; NULL when out of
 * memory). `what` names the kind of file in them: "plugin", "config", "command" (as in
 * "plugin file /x is writable by everyone", "config directory /y is ..."). */
#ifndef CORE_TRUST_H
#define CORE_TRUST_H

/* Checks path as above and opens the file O_RDONLY|O_CLOEXEC|O_NONBLOCK (the very
 * inode that was checked). */
int trust_open(const char *path, const char *what, int *ret_fd, char **ret_reason);

/* The same check without keeping the file open. */
int trust_check_file(const char *path, const char *what, char **ret_reason);

/* The same rules for a directory (the directory itself may not be group/other
 * writable, sticky or not). */
int trust_check_dir(const char *path, const char *what, char **ret_reason);

#endif
