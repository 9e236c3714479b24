/* harness_store.c — stores prepared with the core library before a server starts
 * (this file includes the core's header, which harness.h's names would clash with). */
#include <unistd.h>

#include "busfs/bus.h"

int bus_store_churn_agents(const char *store, long cycles)
{
    struct bus_config cfg = {.store_dir = store, .store_max_bytes = 1ull << 30};
    struct bus *b;
    struct bus_error err = {0};
    if (bus_open(&cfg, &b, &err) < 0)
        return -1;
    for (long i = 0; i < cycles; i++)
        if (bus_agent_create(b, "c", 0, 0, NULL, &err) < 0 ||
            bus_agent_remove(b, "c", 0, &err) < 0)
            return -1;
    /* One-letter name: the journal (61 bytes a cycle) stays below the size that makes
     * the bus compact it. No bus_close: the caller's process exits, so the journal is left as a crash
     * leaves it, every record in it. */
    return 0;
}
