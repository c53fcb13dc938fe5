/*
 * The proxy-wasm callbacks shared by the examples.
 *
 * One VM can host several plugins (Envoy shares a VM between filters with the same
 * module and vm_id), each with its own root context and configuration. Every
 * stream context records its plugin's root context, so a request is handled with
 * the configuration of the filter it passes through. Root contexts live in a list
 * allocated with malloc(); stream records are taken from a free list of spare
 * records and returned to it in proxy_on_delete, so a steady stream of requests
 * allocates nothing after the first ones and nothing accumulates across requests.
 *
 * Envoy calls a callback only when the module exports it, so this file exports just
 * what the examples need per request: proxy_on_context_create,
 * proxy_on_request_headers and proxy_on_delete (no proxy_on_done, proxy_on_log,
 * response or body callbacks, each of which would cost a call into the VM per
 * request and filter).
 *
 * Each VM also adds its linear memory size to the gauge
 * meshext_examples.<example>.wasm_memory_bytes (the sum over the VMs of the module),
 * so a soak test can watch the modules' memory from Envoy's /stats.
 */
#include "proxy_wasm.h"

#define STREAM_BUCKETS 256u

typedef struct root_context {
  uint32_t id;
  void *state; /* the example's parsed configuration, NULL until configured */
  struct root_context *next;
} root_context_t;

typedef struct stream_context {
  uint32_t id;
  root_context_t *root;
  struct stream_context *next;
} stream_context_t;

static root_context_t *roots;
static stream_context_t *streams[STREAM_BUCKETS];
/* Records of deleted streams, reused by the next streams (linked through next). */
static stream_context_t *spare_streams;

static uint32_t memory_gauge;
static int memory_gauge_defined;
static size_t memory_reported;

void log_text(int32_t level, const char *a, const char *b, const char *c, const char *d) {
  const char *parts[4] = {a, b, c, d};
  size_t total = 0;
  for (int i = 0; i < 4; i++) total += parts[i] ? strlen(parts[i]) : 0;
  char *line = malloc(total + 1);
  if (line == NULL) return;
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    if (parts[i] == NULL) continue;
    size_t k = strlen(parts[i]);
    memcpy(line + n, parts[i], k);
    n += k;
  }
  proxy_log(level, line, n);
  free(line);
}

/* Adds any growth of this VM's linear memory to the shared gauge. */
static void report_memory(void) {
  size_t now = wasm_memory_bytes();
  if (memory_gauge_defined && now != memory_reported) {
    proxy_increment_metric(memory_gauge, (int64_t)now - (int64_t)memory_reported);
    memory_reported = now;
  }
}

static root_context_t *find_root(uint32_t id) {
  for (root_context_t *r = roots; r != NULL; r = r->next) {
    if (r->id == id) return r;
  }
  return NULL;
}

static stream_context_t **stream_slot(uint32_t id) {
  stream_context_t **slot = &streams[id % STREAM_BUCKETS];
  while (*slot != NULL && (*slot)->id != id) slot = &(*slot)->next;
  return slot;
}

EXPORT(proxy_abi_version_0_2_1)
void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_vm_start)
int32_t proxy_on_vm_start(uint32_t root_context_id, size_t vm_configuration_size) {
  (void)root_context_id;
  (void)vm_configuration_size;
  if (!memory_gauge_defined) {
    static const char prefix[] = "meshext_examples.";
    static const char suffix[] = ".wasm_memory_bytes";
    size_t a = sizeof(prefix) - 1, b = strlen(EXAMPLE_NAME), c = sizeof(suffix) - 1;
    char *name = malloc(a + b + c);
    if (name != NULL) {
      memcpy(name, prefix, a);
      memcpy(name + a, EXAMPLE_NAME, b);
      memcpy(name + a + b, suffix, c);
      memory_gauge_defined =
          proxy_define_metric(METRIC_GAUGE, name, a + b + c, &memory_gauge) == WASM_OK;
      free(name);
    }
  }
  report_memory();
  return 1;
}

EXPORT(proxy_on_context_create)
void proxy_on_context_create(uint32_t context_id, uint32_t parent_context_id) {
  if (parent_context_id == 0) {
    root_context_t *root = malloc(sizeof *root);
    if (root == NULL) return;
    root->id = context_id;
    root->state = NULL;
    root->next = roots;
    roots = root;
    return;
  }
  stream_context_t *stream = spare_streams;
  if (stream != NULL) {
    spare_streams = stream->next;
  } else {
    stream = malloc(sizeof *stream);
    if (stream == NULL) return;
  }
  stream->id = context_id;
  stream->root = find_root(parent_context_id);
  stream_context_t **slot = &streams[context_id % STREAM_BUCKETS];
  stream->next = *slot;
  *slot = stream;
}

EXPORT(proxy_on_configure)
int32_t proxy_on_configure(uint32_t root_context_id, size_t configuration_size) {
  root_context_t *root = find_root(root_context_id);
  if (root == NULL) return 0;
  char *config = NULL;
  size_t size = 0;
  if (configuration_size > 0 &&
      proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, configuration_size, &config,
                             &size) != WASM_OK) {
    log_text(LOG_ERROR, EXAMPLE_NAME, ": cannot read the plugin configuration", NULL, NULL);
    return 0;
  }
  void *state = NULL;
  int ok = example_configure(config != NULL ? config : "", size, &state);
  free(config);
  if (!ok) return 0;
  if (root->state != NULL) example_free(root->state);
  root->state = state;
  report_memory();
  return 1;
}

EXPORT(proxy_on_request_headers)
int32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) {
  (void)headers;
  (void)end_of_stream;
  stream_context_t *stream = *stream_slot(context_id);
  int32_t action = ACTION_CONTINUE;
  if (stream != NULL && stream->root != NULL && stream->root->state != NULL) {
    action = example_request_headers(stream->root->state, context_id);
  }
  report_memory();
  return action;
}

void *example_state_of(uint32_t context_id) {
  stream_context_t *stream = *stream_slot(context_id);
  return stream != NULL && stream->root != NULL ? stream->root->state : NULL;
}

EXPORT(proxy_on_delete)
void proxy_on_delete(uint32_t context_id) {
  stream_context_t **slot = stream_slot(context_id);
  if (*slot != NULL) {
    stream_context_t *stream = *slot;
    *slot = stream->next;
    stream->next = spare_streams;
    spare_streams = stream;
    return;
  }
  for (root_context_t **r = &roots; *r != NULL; r = &(*r)->next) {
    if ((*r)->id == context_id) {
      root_context_t *root = *r;
      *r = root->next;
      /* Streams that outlive their plugin's root context keep running unconfigured. */
      for (uint32_t b = 0; b < STREAM_BUCKETS; b++) {
        for (stream_context_t *s = streams[b]; s != NULL; s = s->next) {
          if (s->root == root) s->root = NULL;
        }
      }
      if (root->state != NULL) example_free(root->state);
      free(root);
      return;
    }
  }
}
