/*
 * The message text as the client sends it: the end of the header section
 * and the 8-bit to 7-bit MIME conversion (see mime7.h).
 */
#include "delivery/mime7.h"

#include <string.h>

/* ---- the end of the header section ---- */

/* At a line start, after a CR at a line start, inside a line, after a CR
 * inside a line. */
enum { HS_BOL, HS_BOL_CR, HS_MID, HS_MID_CR };

void
hdr_scan_feed(struct hdr_scan *h, const char *p, size_t n)
{
    int st = h->st;
    for (size_t i = 0; i < n && !h->done; i++) {
        char c = p[i];
        if (st == HS_BOL_CR && c == '\n')
            h->done = true;
        else if (c == '\r')
            st = st == HS_BOL ? HS_BOL_CR : HS_MID_CR;
        else if (c == '\n' && st == HS_MID_CR)
            st = HS_BOL;
        else
            st = HS_MID;
    }
    h->st = st;
}
