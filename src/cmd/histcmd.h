/*
 * `ternctl queue show ID` and `ternctl trace QUERY`: a queued message's
 * envelope and attempts, and the timeline of messages from the history
 * journal. Both work with or without a running ternd.
 */
#ifndef TERN_CMD_HISTCMD_H
#define TERN_CMD_HISTCMD_H

struct config;

/* argv: the words after the command. Exit status: 0 found, 1 nothing
 * found or a runtime failure, 2 usage. */
int histcmd_queue_show(struct config *cfg, int argc, char **argv);
int histcmd_trace(struct config *cfg, int argc, char **argv);

#endif
