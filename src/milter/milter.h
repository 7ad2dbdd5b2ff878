/*
 * The Sendmail milter protocol, MTA side, version 6 (what libmilter 8.14+,
 * rspamd, clamav-milter and opendkim speak): filter addresses, packets
 * encoded and decoded without any I/O (codec.c), and one connection to one
 * filter on a libevent loop (conn.c).
 *
 * A packet is a 4-byte length in network order (counting the command
 * byte), a command byte and data. Strings in the data are NUL-terminated;
 * numbers are 32 bits in network order. Everything a filter sends is
 * hostile: a packet over MILTER_PACKET_MAX is a protocol error, strings must
 * end inside the packet, and header, address and reply texts are checked
 * before tern uses them.
 */
#ifndef TERN_MILTER_H
#define TERN_MILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "util/buf.h"
#include "util/status.h"

#define MILTER_VERSION    6
#define MILTER_PACKET_MAX (1024 * 1024) /* a longer packet from a filter: protocol error */
#define MILTER_CHUNK      65535         /* body bytes per SMFIC_BODY (libmilter's chunk) */
#define MILTER_SPEC_MAX   300           /* longest inet:/unix: address */
#define MILTER_MAX        16            /* filters in the milters list */

/* Commands, MTA to filter (SMFIC_*). */
enum {
    MILTER_C_ABORT = 'A',
    MILTER_C_BODY = 'B',
    MILTER_C_CONNECT = 'C',
    MILTER_C_MACRO = 'D',
    MILTER_C_BODYEOB = 'E',
    MILTER_C_HELO = 'H',
    MILTER_C_HEADER = 'L',
    MILTER_C_MAIL = 'M',
    MILTER_C_EOH = 'N',
    MILTER_C_OPTNEG = 'O',
    MILTER_C_QUIT = 'Q',
    MILTER_C_RCPT = 'R',
    MILTER_C_DATA = 'T',
};

/* Replies, filter to MTA (SMFIR_*). */
enum {
    MILTER_R_ADDRCPT = '+',
    MILTER_R_DELRCPT = '-',
    MILTER_R_ADDRCPT_PAR = '2',
    MILTER_R_SHUTDOWN = '4',
    MILTER_R_ACCEPT = 'a',
    MILTER_R_REPLBODY = 'b',
    MILTER_R_CONTINUE = 'c',
    MILTER_R_DISCARD = 'd',
    MILTER_R_CHGFROM = 'e',
    MILTER_R_CONN_FAIL = 'f',
    MILTER_R_ADDHEADER = 'h',
    MILTER_R_INSHEADER = 'i',
    MILTER_R_SETSYMLIST = 'l',
    MILTER_R_CHGHEADER = 'm',
    MILTER_R_PROGRESS = 'p',
    MILTER_R_QUARANTINE = 'q',
    MILTER_R_REJECT = 'r',
    MILTER_R_SKIP = 's',
    MILTER_R_TEMPFAIL = 't',
    MILTER_R_REPLYCODE = 'y',
    MILTER_R_OPTNEG = 'O',
};

/* Actions a filter may take (SMFIF_*), offered in SMFIC_OPTNEG. */
#define MILTER_F_ADDHDRS     0x001u
#define MILTER_F_CHGBODY     0x002u
#define MILTER_F_ADDRCPT     0x004u
#define MILTER_F_DELRCPT     0x008u
#define MILTER_F_CHGHDRS     0x010u
#define MILTER_F_QUARANTINE  0x020u
#define MILTER_F_CHGFROM     0x040u
#define MILTER_F_ADDRCPT_PAR 0x080u
#define MILTER_F_SETSYMLIST  0x100u /* macro lists asked for at negotiation */
/* Every action tern carries out. */
#define MILTER_F_ALL 0x1ffu

/* Protocol steps (SMFIP_*): NO* a command the filter does not want, NR_*
 * a command it will not answer. */
#define MILTER_P_NOCONNECT   0x00000001u
#define MILTER_P_NOHELO      0x00000002u
#define MILTER_P_NOMAIL      0x00000004u
#define MILTER_P_NORCPT      0x00000008u
#define MILTER_P_NOBODY      0x00000010u
#define MILTER_P_NOHDRS      0x00000020u
#define MILTER_P_NOEOH       0x00000040u
#define MILTER_P_NR_HDR      0x00000080u
#define MILTER_P_NOUNKNOWN   0x00000100u
#define MILTER_P_NODATA      0x00000200u
#define MILTER_P_SKIP        0x00000400u
#define MILTER_P_RCPT_REJ    0x00000800u
#define MILTER_P_NR_CONN     0x00001000u
#define MILTER_P_NR_HELO     0x00002000u
#define MILTER_P_NR_MAIL     0x00004000u
#define MILTER_P_NR_RCPT     0x00008000u
#define MILTER_P_NR_DATA     0x00010000u
#define MILTER_P_NR_UNKN     0x00020000u
#define MILTER_P_NR_EOH      0x00040000u
#define MILTER_P_NR_BODY     0x00080000u
#define MILTER_P_HDR_LEADSPC 0x00100000u
/* What tern offers: every step may be skipped or left unanswered, SKIP is
 * understood, header values keep their leading space when asked; rejected
 * recipients are never shown to filters (no RCPT_REJ). */
#define MILTER_P_OFFER (0x001fffffu & ~MILTER_P_RCPT_REJ)

/* Macro stages of SMFIC_OPTNEG's macro lists (SMFIM_*). */
enum {
    MILTER_M_CONNECT,
    MILTER_M_HELO,
    MILTER_M_MAIL,
    MILTER_M_RCPT,
    MILTER_M_DATA,
    MILTER_M_EOM,
    MILTER_M_EOH,
    MILTER_M_COUNT
};

/* Macro names a filter may ask for per step: a longer list is ignored. */
#define MILTER_MACRO_LIST_MAX 1024
#define MILTER_MACROS_MAX     32

/* A filter's address: "inet:HOST:PORT" (a numeric IPv4 address, or IPv6 in
 * brackets; "localhost" is 127.0.0.1) or "unix:/absolute/path". */
struct milter_spec {
    char name[MILTER_SPEC_MAX + 1]; /* as written, for the log */
    struct sockaddr_storage ss;
    socklen_t sslen;
};

/* Parse one address; -1 with a reason in err when it is not one. */
int milter_spec_parse(const char *s, size_t n, struct milter_spec *out, char *err, size_t cap);
/* A list separated by commas and/or blanks: at most MILTER_MAX. *out
 * (owned, *n entries; NULL when the list is empty) is set only on success. */
int milter_specs_parse(
    const char *text, struct milter_spec **out, size_t *n, char *err, size_t cap);

/* ---- encoding: each appends one whole packet to b ---- */

void milter_put(struct buf *b, char cmd, const void *data, size_t n);
void milter_put_optneg(struct buf *b, uint32_t version, uint32_t actions, uint32_t protocol);
/* NUL-terminated strings one after the other (HELO, MAIL, RCPT, HEADER). */
void milter_put_strs(struct buf *b, char cmd, const char *const *strs, size_t n);
/* SMFIC_MACRO for the command cmd: kv holds n name, value pairs; pairs with
 * a NULL value are left out. */
void milter_put_macros(struct buf *b, char cmd, const char *const *kv, size_t n);
/* SMFIC_CONNECT: the client's name, then its address (NULL: unknown). */
void milter_put_connect(struct buf *b, const char *host, const struct sockaddr *sa);

/* ---- decoding ---- */

/* Is a whole packet at p[0..n)? 1 with its total size (header included)
 * in *len, 0 when more bytes are needed, -1 when the length is not one a
 * filter may send (0, or over MILTER_PACKET_MAX). */
int milter_frame(const uint8_t *p, size_t n, size_t *len);

/* A decoded reply. Pointers borrow the packet's data. */
struct milter_reply {
    char code;
    /* OPTNEG, and the macro names it asks for per step (NULL: none asked;
     * not NUL-terminated) */
    uint32_t version, actions, protocol;
    const char *macros[MILTER_M_COUNT];
    size_t macros_len[MILTER_M_COUNT];
    /* INSHEADER, CHGHEADER */
    uint32_t index;
    /* The first and second string (header name and value; recipient or
     * sender and its ESMTP arguments; quarantine reason; reply text); for
     * REPLBODY, s1 is the body bytes (not NUL-terminated). */
    const char *s1, *s2;
    size_t s1_len, s2_len;
};

/* Decode a packet (as milter_frame found it). -1 when the code is unknown
 * or the data is not what the code needs. */
int milter_reply_parse(const uint8_t *pkt, size_t len, struct milter_reply *r);

/* A filter's SMFIR_REPLYCODE text: "4XX x.y.z text" or "5XX ..." (a
 * multi-line reply keeps its first line; the enhanced code must be of the
 * reply's class, or is replaced by 4.7.1 / 5.7.1; the text is reduced to
 * printable ASCII). -1 when it is no 4xx/5xx reply. */
int milter_replycode(const char *s, size_t n, struct tern_status *st);

/* A header field name a filter gives: printable ASCII without ':' and
 * blanks, 1..MILTER_HDR_NAME_MAX bytes. */
#define MILTER_HDR_NAME_MAX 128
bool milter_hdr_name_ok(const char *s, size_t n);
/* A header value a filter gives, as it goes into the message: line breaks
 * (LF or CRLF) become CRLF and must be followed by a blank (folding,
 * RFC 5322 §2.2.3); no other controls but tab. The value is appended to
 * out; -1 (out unchanged) when it cannot be one. */
int milter_hdr_value(const char *s, size_t n, struct buf *out);
/* An address a filter gives (ADDRCPT, DELRCPT, CHGFROM), with or without
 * angle brackets: the bare address appended to out (NUL-terminated), or -1
 * when it has controls, blanks or is over 512 bytes. "<>" is the empty
 * address. */
int milter_addr(const char *s, size_t n, struct buf *out);

/* ---- one connection to one filter (conn.c) ---- */

struct event_base;
struct milter_conn;

/* A reply packet arrived (r borrows the connection's input until the
 * callback returns), or the connection failed: r NULL and why says how
 * (refused, timeout, closed, garbage). After a failure the connection is
 * dead: only milter_conn_free may follow. The callback may free c. */
typedef void (*milter_conn_cb)(
    struct milter_conn *c, const struct milter_reply *r, const char *why, void *arg);

/* Start connecting to sp (copied); packets sent meanwhile wait. The
 * connection is not waiting for a reply until milter_conn_expect. */
struct milter_conn *milter_conn_new(struct event_base *base, const struct milter_spec *sp,
    int64_t timeout_ms, milter_conn_cb cb, void *arg);
/* Queue the packets in b (taken, b emptied). */
void milter_conn_send(struct milter_conn *c, struct buf *b);
/* Wait for one reply packet for at most the timeout from now (again after
 * a PROGRESS reply). Replies that come without one expected are a protocol
 * error. */
void milter_conn_expect(struct milter_conn *c);
/* No reply is awaited any more (the timer stops). */
void milter_conn_idle(struct milter_conn *c);
/* Close (NULL is fine). No callback runs after this. */
void milter_conn_free(struct milter_conn *c);
const char *milter_conn_name(const struct milter_conn *c);

#endif
