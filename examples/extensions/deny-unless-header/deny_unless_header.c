/*
 * deny-unless-header: answers 403 to requests that lack a header.
 *
 * Configuration:
 *   plain text                           the header name; any value passes
 *   {"name": "x-...", "value": "..."}    JSON; with "value" only that exact value passes
 *
 * A denied request gets a local 403 response with a short text body that names the
 * header (never the expected value); it does not reach the application.
 */
#include "proxy_wasm.h"

const char EXAMPLE_NAME[] = "deny_unless_header";

static const char DETAILS[] = "meshext_deny_unless_header";
/*
 * One header, content-type: text/plain, in the proxy-wasm pair serialization: the
 * pair count, each key and value size, then each key and value followed by a NUL
 * (the last NUL is the string literal's own, so the whole array is sent).
 */
static const char RESPONSE_HEADERS[] =
    "\x01\x00\x00\x00"
    "\x0c\x00\x00\x00\x0a\x00\x00\x00"
    "content-type\0text/plain";

typedef struct {
  text_t name;
  text_t value; /* data NULL: any value passes */
  text_t missing_body;
  text_t mismatch_body;
} state_t;

void example_free(void *p) {
  state_t *state = p;
  free(state->name.data);
  free(state->value.data);
  free(state->missing_body.data);
  free(state->mismatch_body.data);
  free(state);
}

static text_t body(const char *before, const text_t *name, const char *after) {
  size_t a = strlen(before), c = strlen(after);
  text_t t = {malloc(a + name->size + c + 1), a + name->size + c};
  if (t.data == NULL) return t;
  memcpy(t.data, before, a);
  memcpy(t.data + a, name->data, name->size);
  memcpy(t.data + a + name->size, after, c);
  t.data[t.size] = 0;
  return t;
}

int example_configure(const char *config, size_t size, void **out) {
  state_t *state = malloc(sizeof *state);
  if (state == NULL) return 0;
  memset(state, 0, sizeof *state);
  const char *error = NULL;
  if (config_is_json(config, size)) {
    int has_name = json_string_member(config, size, "name", &state->name, &error);
    int has_value = has_name < 0 ? -1 : json_string_member(config, size, "value", &state->value, &error);
    if (has_name < 0 || has_value < 0) {
      log_text(LOG_ERROR, "deny-unless-header: invalid JSON configuration: ", error, NULL, NULL);
      example_free(state);
      return 0;
    }
  } else {
    while (size > 0 && (config[size - 1] == ' ' || config[size - 1] == '\n' ||
                        config[size - 1] == '\r' || config[size - 1] == '\t'))
      size--;
    while (size > 0 && (*config == ' ' || *config == '\t' || *config == '\n')) {
      config++;
      size--;
    }
    state->name = text_copy(config, size);
  }
  if (state->name.data == NULL || !valid_header_name(state->name.data, state->name.size) ||
      state->name.data[0] == ':') {
    log_text(LOG_ERROR, "deny-unless-header: the configuration must name a header, got '",
             state->name.data != NULL ? state->name.data : "", "'", NULL);
    example_free(state);
    return 0;
  }
  state->missing_body = body("forbidden: the request has no ", &state->name, " header\n");
  state->mismatch_body = body("forbidden: the request's ", &state->name, " header is not accepted\n");
  if (state->missing_body.data == NULL || state->mismatch_body.data == NULL) {
    example_free(state);
    return 0;
  }
  *out = state;
  return 1;
}

static int32_t deny(const text_t *message) {
  proxy_send_local_response(403, DETAILS, sizeof(DETAILS) - 1, message->data, message->size,
                            RESPONSE_HEADERS, sizeof(RESPONSE_HEADERS), -1);
  return ACTION_PAUSE;
}

int32_t example_request_headers(void *p, uint32_t context_id) {
  (void)context_id;
  state_t *state = p;
  char *value = NULL;
  size_t value_size = 0;
  int32_t status = proxy_get_header_map_value(MAP_REQUEST_HEADERS, state->name.data,
                                              state->name.size, &value, &value_size);
  int32_t action = ACTION_CONTINUE;
  if (status != WASM_OK) {
    action = deny(&state->missing_body);
  } else if (state->value.data != NULL &&
             (value_size != state->value.size ||
              memcmp(value, state->value.data, value_size) != 0)) {
    action = deny(&state->mismatch_body);
  }
  free(value);
  return action;
}
