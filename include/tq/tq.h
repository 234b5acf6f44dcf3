/* tq.h - umbrella header of libtq, the networked task queue. */
#ifndef TQ_H
#define TQ_H

#define TQ_VERSION_MAJOR 0
#define TQ_VERSION_MINOR 1
#define TQ_VERSION_PATCH 0

#include "tq_error.h"
#include "tq_client.h"
#include "tq_worker.h"
#include "tq_pool.h"
#include "tq_queue.h"

#endif
