/*
 * header-append: adds one header to every request it sees.
 *
 * Configuration:
 *   plain text                          the value; the header is x-header-append
 *   {"value": "...", "name": "x-..."}   JSON (ServiceMeshExtension v1); name optional
 *
 * The header is added with proxy_add_header_map_value, so when several instances
 * run in one chain each appends its own entry and the application receives them in
 * execution order.
 */
#include "proxy_wasm.h"

const char EXAMPLE_NAME[] = "header_append";

static const char DEFAULT_NAME[] = "x-header-append";

typedef struct {
  text_t name;
  text_t value;
} state_t;

void example_free(void *p) {
  state_t *state = p;
  free(state->name.data);
  free(state->value.data);
  free(state);
}

int example_configure(const char *config, size_t size, void **out) {
  state_t *state = malloc(sizeof *state);
  if (state == NULL) return 0;
  state->name.data = NULL;
  state->value.data = NULL;
  const char *error = NULL;
  if (config_is_json(config, size)) {
    int has_value = json_string_member(config, size, "value", &state->value, &error);
    int has_name = has_value < 0 ? -1 : json_string_member(config, size, "name", &state->name, &error);
    if (has_value < 0 || has_name < 0) {
      log_text(LOG_ERROR, "header-append: invalid JSON configuration: ", error, NULL, NULL);
      example_free(state);
      return 0;
    }
    if (!has_value) {
      log_text(LOG_ERROR, "header-append: the JSON configuration needs a \"value\" string",
               NULL, NULL, NULL);
      example_free(state);
      return 0;
    }
  } else {
    state->value = text_copy(config, size);
  }
  if (state->name.data == NULL) state->name = text_copy(DEFAULT_NAME, sizeof(DEFAULT_NAME) - 1);
  if (state->name.data == NULL || state->value.data == NULL) {
    example_free(state);
    return 0;
  }
  if (!valid_header_name(state->name.data, state->name.size)) {
    log_text(LOG_ERROR, "header-append: invalid header name '", state->name.data, "'", NULL);
    example_free(state);
    return 0;
  }
  if (!valid_header_value(state->value.data, state->value.size)) {
    log_text(LOG_ERROR, "header-append: the header value contains CR, LF or NUL", NULL, NULL,
             NULL);
    example_free(state);
    return 0;
  }
  *out = state;
  return 1;
}

int32_t example_request_headers(void *p, uint32_t context_id) {
  (void)context_id;
  state_t *state = p;
  proxy_add_header_map_value(MAP_REQUEST_HEADERS, state->name.data, state->name.size,
                             state->value.data, state->value.size);
  return ACTION_CONTINUE;
}
