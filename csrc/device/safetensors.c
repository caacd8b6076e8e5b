/* safetensors reader/writer for instantft's headers; see safetensors.h for what is accepted. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_NAME 512
#define ST_MAX_ENTRIES 4096
#define ST_MAX_INT ((uint64_t)1 << 53) /* JSON integers above this lose exactness elsewhere */

static const char *const DTYPE_NAMES[ST_NDTYPES] = {"U8",  "I8",  "I16", "U16", "I32", "U32",  "I64",
                                                    "U64", "F16", "BF16", "F32", "F64", "BOOL"};
static const size_t DTYPE_SIZES[ST_NDTYPES] = {1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1};

size_t st_itemsize(st_dtype d) { return (unsigned)d < ST_NDTYPES ? DTYPE_SIZES[d] : 0; }
const char *st_dtype_name(st_dtype d) { return (unsigned)d < ST_NDTYPES ? DTYPE_NAMES[d] : "?"; }

static int fail(st_file *st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->err, sizeof st->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* --- a strict JSON scanner over [p, end) --------------------------------------------------- */
typedef struct {
    const char *p, *end, *start;
    char *arena, *arena_end; /* decoded strings are written here */
    st_file *st;
    int seen_meta;
} scan;

static void skip_ws(scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int expect(scan *s, char c) {
    skip_ws(s);
    if (s->p >= s->end || *s->p != c)
        return fail(s->st, "bad header JSON: expected '%c' at byte %ld", c, (long)(s->p - s->start));
    s->p++;
    return 0;
}

static int peek(scan *s, char c) {
    skip_ws(s);
    return s->p < s->end && *s->p == c;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at p (2..4 bytes; no overlong forms, surrogates or
 * code points above U+10FFFF), or -1. */
int st_utf8_length(const char *p, const char *end) {
    const unsigned char *u = (const unsigned char *)p;
    int n;
    unsigned cp;
    if (u[0] >= 0xC2 && u[0] <= 0xDF) n = 2, cp = u[0] & 0x1F;
    else if (u[0] >= 0xE0 && u[0] <= 0xEF) n = 3, cp = u[0] & 0x0F;
    else if (u[0] >= 0xF0 && u[0] <= 0xF4) n = 4, cp = u[0] & 0x07;
    else return -1;
    if (end - p < n) return -1;
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (u[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    return n;
}

/* Decode a JSON string into the arena; *out points at the NUL-terminated result. */
static int read_string(scan *s, char **out, size_t max_len) {
    if (expect(s, '"')) return -1;
    char *dst = s->arena, *first = s->arena;
    for (;;) {
        if (s->p >= s->end) return fail(s->st, "bad header JSON: unterminated string");
        unsigned char c = (unsigned char)*s->p++;
        if (c == '"') break;
        if (c < 0x20) return fail(s->st, "bad header JSON: control character in a string");
        unsigned cp;
        if (c >= 0x80) { /* a UTF-8 sequence: checked, then copied unchanged */
            int len = st_utf8_length(s->p - 1, s->end);
            if (len < 0) return fail(s->st, "bad header JSON: invalid UTF-8 in a string");
            if (s->arena_end - dst < len) return fail(s->st, "bad header JSON: string arena exhausted");
            memcpy(dst, s->p - 1, (size_t)len);
            dst += len, s->p += len - 1;
        } else if (c != '\\') {
            if (dst >= s->arena_end) return fail(s->st, "bad header JSON: string arena exhausted");
            *dst++ = (char)c;
        } else {
            if (s->p >= s->end) return fail(s->st, "bad header JSON: unterminated escape");
            char e = *s->p++;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (s->end - s->p < 4 || hex4(s->p, &cp)) return fail(s->st, "bad header JSON: bad \\u escape");
                s->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || hex4(s->p + 2, &lo) || lo < 0xDC00 ||
                        lo > 0xDFFF)
                        return fail(s->st, "bad header JSON: unpaired surrogate");
                    s->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return fail(s->st, "bad header JSON: unpaired surrogate");
                }
                if (cp == 0) return fail(s->st, "bad header JSON: NUL in a string");
                break;
            default: return fail(s->st, "bad header JSON: bad escape (byte 0x%02x after a backslash)", (unsigned char)e);
            }
            unsigned char buf[4];
            int n;
            if (cp < 0x80) buf[0] = (unsigned char)cp, n = 1;
            else if (cp < 0x800) buf[0] = (unsigned char)(0xC0 | (cp >> 6)), buf[1] = (unsigned char)(0x80 | (cp & 0x3F)), n = 2;
            else if (cp < 0x10000)
                buf[0] = (unsigned char)(0xE0 | (cp >> 12)), buf[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)),
                buf[2] = (unsigned char)(0x80 | (cp & 0x3F)), n = 3;
            else
                buf[0] = (unsigned char)(0xF0 | (cp >> 18)), buf[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F)),
                buf[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)), buf[3] = (unsigned char)(0x80 | (cp & 0x3F)), n = 4;
            if (s->arena_end - dst < n) return fail(s->st, "bad header JSON: string arena exhausted");
            memcpy(dst, buf, (size_t)n);
            dst += n;
        }
        if ((size_t)(dst - first) > max_len) return fail(s->st, "bad header: string longer than %zu bytes", max_len);
    }
    if (dst >= s->arena_end) return fail(s->st, "bad header JSON: string arena exhausted");
    *dst++ = '\0';
    s->arena = dst;
    *out = first;
    return 0;
}

static int read_uint(scan *s, uint64_t *out) {
    skip_ws(s);
    if (s->p >= s->end || *s->p < '0' || *s->p > '9')
        return fail(s->st, "bad header JSON: expected a non-negative integer at byte %ld", (long)(s->p - s->start));
    if (*s->p == '0' && s->end - s->p > 1 && s->p[1] >= '0' && s->p[1] <= '9')
        return fail(s->st, "bad header JSON: integer with a leading zero");
    uint64_t v = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        v = v * 10 + (uint64_t)(*s->p++ - '0');
        if (v > ST_MAX_INT) return fail(s->st, "bad header: integer too large");
    }
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return fail(s->st, "bad header JSON: expected an integer, got a fraction");
    *out = v;
    return 0;
}

/* [n0, n1, ...] with at most max entries */
static int read_uint_array(scan *s, uint64_t *out, int max, int *count) {
    if (expect(s, '[')) return -1;
    int n = 0;
    if (!peek(s, ']')) {
        for (;;) {
            if (n >= max) return fail(s->st, "bad header: array longer than %d", max);
            if (read_uint(s, &out[n++])) return -1;
            if (peek(s, ',')) {
                s->p++;
                continue;
            }
            break;
        }
    }
    if (expect(s, ']')) return -1;
    *count = n;
    return 0;
}

static int parse_dtype(const char *name, st_dtype *out) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(name, DTYPE_NAMES[i]) == 0) return *out = (st_dtype)i, 0;
    return -1;
}

static int parse_tensor(scan *s, st_tensor *t) {
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    if (expect(s, '{')) return -1;
    if (!peek(s, '}')) {
        for (;;) {
            char *key;
            if (read_string(s, &key, 64) || expect(s, ':')) return -1;
            if (strcmp(key, "dtype") == 0 && !have_dtype) {
                char *dt;
                if (read_string(s, &dt, 16)) return -1;
                if (parse_dtype(dt, &t->dtype)) return fail(s->st, "tensor %s: unknown dtype %s", t->name, dt);
                have_dtype = 1;
            } else if (strcmp(key, "shape") == 0 && !have_shape) {
                if (read_uint_array(s, t->shape, ST_MAX_DIMS, &t->ndim)) return -1;
                have_shape = 1;
            } else if (strcmp(key, "data_offsets") == 0 && !have_offsets) {
                uint64_t off[2] = {0, 0};
                int n = 0;
                if (read_uint_array(s, off, 2, &n)) return -1;
                if (n != 2) return fail(s->st, "tensor %s: data_offsets must have 2 entries", t->name);
                t->begin = off[0], t->end = off[1];
                have_offsets = 1;
            } else {
                return fail(s->st, "tensor %s: unexpected or repeated key %s", t->name, key);
            }
            if (peek(s, ',')) {
                s->p++;
                continue;
            }
            break;
        }
    }
    if (expect(s, '}')) return -1;
    if (!(have_dtype && have_shape && have_offsets))
        return fail(s->st, "tensor %s: needs dtype, shape and data_offsets", t->name);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] != 0 && numel > ST_MAX_INT / t->shape[i]) return fail(s->st, "tensor %s: shape too large", t->name);
        numel *= t->shape[i];
    }
    t->numel = numel;
    if (numel > ST_MAX_INT / 8) return fail(s->st, "tensor %s: shape too large", t->name);
    uint64_t nbytes = numel * st_itemsize(t->dtype);
    if (t->begin > t->end || t->end - t->begin != nbytes)
        return fail(s->st, "tensor %s: data_offsets [%llu, %llu] do not hold %llu x %s", t->name,
                    (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)numel,
                    DTYPE_NAMES[t->dtype]);
    return 0;
}

static int parse_metadata(scan *s) {
    st_file *st = s->st;
    if (s->seen_meta) return fail(st, "bad header: repeated __metadata__");
    s->seen_meta = 1;
    if (expect(s, '{')) return -1;
    int cap = 0;
    if (!peek(s, '}')) {
        for (;;) {
            char *key, *value;
            if (read_string(s, &key, ST_MAX_NAME) || expect(s, ':') || read_string(s, &value, ST_MAX_HEADER)) return -1;
            for (int i = 0; i < st->n_meta; i++)
                if (strcmp(st->meta[i].key, key) == 0) return fail(st, "bad header: repeated metadata key %s", key);
            if (st->n_meta >= ST_MAX_ENTRIES) return fail(st, "bad header: too many metadata entries");
            if (st->n_meta == cap) {
                cap = cap ? 2 * cap : 8;
                st_meta *grown = realloc(st->meta, (size_t)cap * sizeof *grown);
                if (!grown) return fail(st, "out of memory reading the header");
                st->meta = grown;
            }
            st->meta[st->n_meta++] = (st_meta){key, value};
            if (peek(s, ',')) {
                s->p++;
                continue;
            }
            break;
        }
    }
    return expect(s, '}');
}

static int by_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* The data section must be covered exactly, tensor after tensor, without holes or overlaps
 * (as the safetensors format requires): a truncated or padded file is refused. */
static int check_layout(st_file *st) {
    if (st->n_tensors == 0) return st->data_size == 0 ? 0 : fail(st, "bad file: data but no tensors");
    st_tensor **order = malloc((size_t)st->n_tensors * sizeof *order);
    if (!order) return fail(st, "out of memory reading the header");
    for (int i = 0; i < st->n_tensors; i++) order[i] = &st->tensors[i];
    qsort(order, (size_t)st->n_tensors, sizeof *order, by_begin);
    uint64_t at = 0;
    int rc = 0;
    for (int i = 0; i < st->n_tensors && !rc; i++) {
        if (order[i]->begin != at)
            rc = fail(st, "bad file: tensor %s starts at %llu, expected %llu (hole or overlap)", order[i]->name,
                      (unsigned long long)order[i]->begin, (unsigned long long)at);
        at = order[i]->end;
    }
    free(order);
    if (!rc && at != st->data_size)
        rc = fail(st, "bad file: tensors end at byte %llu of a %llu-byte data section (truncated or padded)",
                  (unsigned long long)at, (unsigned long long)st->data_size);
    return rc;
}

int st_parse_header(st_file *st, const char *json, size_t len) {
    st->arena = malloc(len + 1);
    if (!st->arena) return fail(st, "out of memory reading the header");
    /* every decoded string is no longer than its JSON form (quotes make room for the NUL) */
    scan s = {json, json + len, json, st->arena, st->arena + len + 1, st, 0};
    if (expect(&s, '{')) return -1;
    int cap = 0;
    if (!peek(&s, '}')) {
        for (;;) {
            char *name;
            if (read_string(&s, &name, ST_MAX_NAME) || expect(&s, ':')) return -1;
            if (strcmp(name, "__metadata__") == 0) {
                if (parse_metadata(&s)) return -1;
            } else {
                if (st_find(st, name)) return fail(st, "bad header: repeated tensor %s", name);
                if (st->n_tensors >= ST_MAX_ENTRIES) return fail(st, "bad header: too many tensors");
                if (st->n_tensors == cap) {
                    cap = cap ? 2 * cap : 16;
                    st_tensor *grown = realloc(st->tensors, (size_t)cap * sizeof *grown);
                    if (!grown) return fail(st, "out of memory reading the header");
                    st->tensors = grown;
                }
                st_tensor *t = &st->tensors[st->n_tensors];
                memset(t, 0, sizeof *t);
                t->name = name;
                if (parse_tensor(&s, t)) return -1;
                st->n_tensors++;
            }
            if (peek(&s, ',')) {
                s.p++;
                continue;
            }
            break;
        }
    }
    if (expect(&s, '}')) return -1;
    skip_ws(&s);
    if (s.p != s.end) return fail(st, "bad header JSON: trailing bytes after the header object");
    return 0;
}

void st_close(st_file *st) {
    if (st->fh) fclose(st->fh);
    free(st->tensors);
    free(st->meta);
    free(st->arena);
    st->fh = NULL, st->tensors = NULL, st->meta = NULL, st->arena = NULL;
    st->n_tensors = st->n_meta = 0;
}

int st_open(st_file *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->fh = fopen(path, "rb");
    if (!st->fh) return fail(st, "%s: cannot open (%s)", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(st->fh), &sb) || !S_ISREG(sb.st_mode)) {
        st_close(st);
        return fail(st, "%s: not a regular file", path);
    }
    st->file_size = (uint64_t)sb.st_size;
    unsigned char len8[8];
    if (st->file_size < 8 || fread(len8, 1, 8, st->fh) != 8) {
        st_close(st);
        return fail(st, "%s: truncated (no safetensors header length)", path);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > st->file_size - 8) {
        st_close(st);
        return fail(st, "%s: header length %llu does not fit a %llu-byte file", path, (unsigned long long)hlen,
                    (unsigned long long)st->file_size);
    }
    char *json = malloc((size_t)hlen);
    if (!json) {
        st_close(st);
        return fail(st, "%s: out of memory for a %llu-byte header", path, (unsigned long long)hlen);
    }
    if (fread(json, 1, (size_t)hlen, st->fh) != (size_t)hlen) {
        free(json);
        st_close(st);
        return fail(st, "%s: truncated header", path);
    }
    st->data_start = 8 + hlen;
    st->data_size = st->file_size - st->data_start;
    char why[ST_ERR_LEN];
    int rc = st_parse_header(st, json, (size_t)hlen);
    free(json);
    if (!rc) rc = check_layout(st);
    if (rc) {
        memcpy(why, st->err, sizeof why);
        st_close(st);
        size_t n = (size_t)snprintf(st->err, sizeof st->err, "%s: ", path);
        if (n < sizeof st->err) strncat(st->err, why, sizeof st->err - n - 1);
        return -1;
    }
    return 0;
}

const st_tensor *st_find(const st_file *st, const char *name) {
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *st_meta_get(const st_file *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

int st_read(st_file *st, const st_tensor *t, uint64_t offset, void *dst, uint64_t nbytes) {
    uint64_t size = t->end - t->begin;
    if (offset > size || nbytes > size - offset)
        return fail(st, "read of %llu bytes at %llu past the end of tensor %s", (unsigned long long)nbytes,
                    (unsigned long long)offset, t->name);
    if (nbytes == 0) return 0;
    uint64_t pos = st->data_start + t->begin + offset;
    if (pos > (uint64_t)INT64_MAX || fseeko(st->fh, (off_t)pos, SEEK_SET) ||
        fread(dst, 1, (size_t)nbytes, st->fh) != (size_t)nbytes)
        return fail(st, "tensor %s: file shorter than its header says (truncated?)", t->name);
    return 0;
}

/* --- writing ------------------------------------------------------------------------------ */
typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *g = realloc(b->buf, cap);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->buf = g, b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

static void put_json_string(sbuf *b, const char *s) {
    put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p;
            put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            put(b, esc, 6);
        } else {
            put(b, (const char *)p, 1);
        }
    }
    put(b, "\"", 1);
}

static int write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w, n -= (size_t)w;
    }
    return 0;
}

int st_write_atomic(const char *path, const st_out_tensor *tensors, int n, const char *meta_key,
                    const char *meta_value, char err[ST_ERR_LEN]) {
    sbuf h = {0};
    char num[96];
    uint64_t at = 0;
    puts_(&h, "{");
    if (meta_key) {
        puts_(&h, "\"__metadata__\":{");
        put_json_string(&h, meta_key);
        puts_(&h, ":");
        put_json_string(&h, meta_value);
        puts_(&h, "}");
    }
    uint64_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    if (!sizes) {
        snprintf(err, ST_ERR_LEN, "%s: out of memory", path);
        free(h.buf);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const st_out_tensor *t = &tensors[i];
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        sizes[i] = numel * st_itemsize(t->dtype);
        if (i || meta_key) puts_(&h, ",");
        put_json_string(&h, t->name);
        puts_(&h, ":{\"dtype\":\"");
        puts_(&h, st_dtype_name(t->dtype));
        puts_(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
            puts_(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)at,
                 (unsigned long long)(at + sizes[i]));
        puts_(&h, num);
        at += sizes[i];
    }
    puts_(&h, "}");
    while (!h.oom && h.len % 8) puts_(&h, " ");
    if (h.oom) {
        snprintf(err, ST_ERR_LEN, "%s: out of memory", path);
        free(h.buf), free(sizes);
        return -1;
    }

    /* temp file in the target's directory, so the rename is atomic */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 64), *dir = malloc(plen + 2);
    if (!tmp || !dir) {
        snprintf(err, ST_ERR_LEN, "%s: out of memory", path);
        free(h.buf), free(sizes), free(tmp), free(dir);
        return -1;
    }
    const char *slash = strrchr(path, '/');
    if (slash) {
        memcpy(dir, path, (size_t)(slash - path) + 1);
        dir[slash - path + 1] = '\0';
    } else {
        strcpy(dir, "./");
    }
    snprintf(tmp, plen + 64, "%s.%s.%ld.tmp", dir, slash ? slash + 1 : path, (long)getpid());
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0) {
        snprintf(err, ST_ERR_LEN, "%s: cannot write here (%s)", path, strerror(errno));
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(((uint64_t)h.len >> (8 * i)) & 0xFF);
    int bad = write_all(fd, len8, 8) || write_all(fd, h.buf, h.len);
    for (int i = 0; i < n && !bad; i++) bad = write_all(fd, tensors[i].data, (size_t)sizes[i]);
    if (bad || fsync(fd)) {
        snprintf(err, ST_ERR_LEN, "%s: write failed (%s)", path, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd)) {
        snprintf(err, ST_ERR_LEN, "%s: write failed (%s)", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path)) {
        snprintf(err, ST_ERR_LEN, "%s: cannot replace (%s)", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) {
        fsync(dfd); /* best effort: the data itself is already durable */
        close(dfd);
    }
    rc = 0;
out:
    free(h.buf), free(sizes), free(tmp), free(dir);
    return rc;
}
