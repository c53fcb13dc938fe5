/*
 * Just enough JSON to read string members of the configuration object that
 * ServiceMeshExtension v1 hands to a module (the object serialized as text).
 * Other members of any type are skipped; nesting is allowed up to a fixed depth.
 */
#include "proxy_wasm.h"

#define MAX_DEPTH 32

typedef struct {
  const char *p;
  const char *end;
  const char *error;
} parser_t;

static void skip_blanks(parser_t *ps) {
  while (ps->p < ps->end &&
         (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int fail(parser_t *ps, const char *why) {
  if (ps->error == NULL) ps->error = why;
  return 0;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int read_hex4(parser_t *ps, uint32_t *out) {
  if (ps->end - ps->p < 4) return fail(ps, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int d = hex_digit(ps->p[i]);
    if (d < 0) return fail(ps, "bad \\u escape");
    v = (v << 4) | (uint32_t)d;
  }
  ps->p += 4;
  *out = v;
  return 1;
}

static size_t put_utf8(char *out, uint32_t cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/*
 * Parses a string at ps->p (which must be '"'). With `out` non-NULL the decoded
 * bytes are written there (the caller sized it: decoded text is never longer
 * than the encoded one); the decoded length goes to *size.
 */
static int parse_string(parser_t *ps, char *out, size_t *size) {
  if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a string");
  ps->p++;
  size_t n = 0;
  while (ps->p < ps->end) {
    char c = *ps->p++;
    if (c == '"') {
      if (size != NULL) *size = n;
      return 1;
    }
    if ((unsigned char)c < 0x20) return fail(ps, "control character in a string");
    if (c != '\\') {
      if (out != NULL) out[n] = c;
      n++;
      continue;
    }
    if (ps->p >= ps->end) break;
    char e = *ps->p++;
    char plain = 0;
    switch (e) {
      case '"': plain = '"'; break;
      case '\\': plain = '\\'; break;
      case '/': plain = '/'; break;
      case 'b': plain = '\b'; break;
      case 'f': plain = '\f'; break;
      case 'n': plain = '\n'; break;
      case 'r': plain = '\r'; break;
      case 't': plain = '\t'; break;
      case 'u': {
        uint32_t cp;
        if (!read_hex4(ps, &cp)) return 0;
        if (cp >= 0xD800 && cp < 0xDC00) {
          uint32_t low;
          if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
            return fail(ps, "unpaired surrogate");
          ps->p += 2;
          if (!read_hex4(ps, &low) || low < 0xDC00 || low > 0xDFFF)
            return fail(ps, "unpaired surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp < 0xE000) {
          return fail(ps, "unpaired surrogate");
        }
        char buf[4];
        size_t k = put_utf8(buf, cp);
        if (out != NULL) memcpy(out + n, buf, k);
        n += k;
        continue;
      }
      default: return fail(ps, "bad escape in a string");
    }
    if (out != NULL) out[n] = plain;
    n++;
  }
  return fail(ps, "unterminated string");
}

static int skip_value(parser_t *ps, int depth);

static int skip_container(parser_t *ps, int depth, char close, int is_object) {
  if (depth > MAX_DEPTH) return fail(ps, "nested too deeply");
  ps->p++;
  skip_blanks(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return 1;
  }
  for (;;) {
    skip_blanks(ps);
    if (is_object) {
      if (!parse_string(ps, NULL, NULL)) return 0;
      skip_blanks(ps);
      if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
      ps->p++;
    }
    if (!skip_value(ps, depth + 1)) return 0;
    skip_blanks(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return 1;
    }
    return fail(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static int skip_literal(parser_t *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
    return fail(ps, "unexpected token");
  ps->p += n;
  return 1;
}

static int skip_value(parser_t *ps, int depth) {
  skip_blanks(ps);
  if (ps->p >= ps->end) return fail(ps, "expected a value");
  char c = *ps->p;
  if (c == '"') return parse_string(ps, NULL, NULL);
  if (c == '{') return skip_container(ps, depth, '}', 1);
  if (c == '[') return skip_container(ps, depth, ']', 0);
  if (c == 't') return skip_literal(ps, "true");
  if (c == 'f') return skip_literal(ps, "false");
  if (c == 'n') return skip_literal(ps, "null");
  if (c == '-' || (c >= '0' && c <= '9')) {
    const char *start = ps->p;
    while (ps->p < ps->end &&
           ((*ps->p >= '0' && *ps->p <= '9') || *ps->p == '-' || *ps->p == '+' ||
            *ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
      ps->p++;
    return ps->p > start ? 1 : fail(ps, "bad number");
  }
  return fail(ps, "unexpected token");
}

int config_is_json(const char *data, size_t size) {
  parser_t ps = {data, data + size, NULL};
  skip_blanks(&ps);
  return ps.p < ps.end && *ps.p == '{';
}

text_t text_copy(const char *data, size_t size) {
  text_t t = {malloc(size + 1), size};
  if (t.data != NULL) {
    memcpy(t.data, data, size);
    t.data[size] = 0;
  }
  return t;
}

int json_string_member(const char *data, size_t size, const char *key, text_t *out,
                       const char **error) {
  parser_t ps = {data, data + size, NULL};
  size_t key_size = strlen(key);
  int found = 0;
  out->data = NULL;
  out->size = 0;
  skip_blanks(&ps);
  if (ps.p >= ps.end || *ps.p != '{') {
    *error = "configuration is not a JSON object";
    return -1;
  }
  ps.p++;
  skip_blanks(&ps);
  if (ps.p < ps.end && *ps.p == '}') {
    ps.p++;
  } else {
    for (;;) {
      skip_blanks(&ps);
      size_t name_size;
      char *name = malloc((size_t)(ps.end - ps.p));
      if (name == NULL) {
        *error = "out of memory";
        return -1;
      }
      int ok = parse_string(&ps, name, &name_size);
      int matches = ok && name_size == key_size && memcmp(name, key, key_size) == 0;
      free(name);
      if (!ok) break;
      skip_blanks(&ps);
      if (ps.p >= ps.end || *ps.p != ':') {
        fail(&ps, "expected ':'");
        break;
      }
      ps.p++;
      skip_blanks(&ps);
      if (matches) {
        if (ps.p >= ps.end || *ps.p != '"') {
          free(out->data);
          out->data = NULL;
          *error = "member is not a string";
          return -1;
        }
        char *value = malloc((size_t)(ps.end - ps.p) + 1);
        size_t value_size;
        if (value == NULL) {
          *error = "out of memory";
          return -1;
        }
        if (!parse_string(&ps, value, &value_size)) {
          free(value);
          break;
        }
        value[value_size] = 0;
        free(out->data); /* a repeated key: the last one wins, as in most parsers */
        out->data = value;
        out->size = value_size;
        found = 1;
      } else if (!skip_value(&ps, 1)) {
        break;
      }
      skip_blanks(&ps);
      if (ps.p < ps.end && *ps.p == ',') {
        ps.p++;
        continue;
      }
      if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
        break;
      }
      fail(&ps, "expected ',' or '}'");
      break;
    }
  }
  skip_blanks(&ps);
  if (ps.error == NULL && ps.p != ps.end) fail(&ps, "text after the JSON object");
  if (ps.error != NULL) {
    free(out->data);
    out->data = NULL;
    out->size = 0;
    *error = ps.error;
    return -1;
  }
  return found;
}

int valid_header_name(const char *name, size_t size) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if (size == 0) return 0;
  for (size_t i = 0; i < size; i++) {
    char c = name[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    for (const char *e = extra; !ok && *e; e++) ok = c == *e;
    if (!ok) return 0;
  }
  return 1;
}

int valid_header_value(const char *value, size_t size) {
  for (size_t i = 0; i < size; i++) {
    if (value[i] == '\r' || value[i] == '\n' || value[i] == 0) return 0;
  }
  return 1;
}
