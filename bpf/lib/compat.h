/* SPDX-License-Identifier: Apache-2.0 */
/* Lets the plain-C logic headers compile as BPF C and as C/C++ in user space. */
#ifndef ENVSTEER_COMPAT_H
#define ENVSTEER_COMPAT_H

#ifdef __bpf__
#ifndef ES_INLINE
#define ES_INLINE static __always_inline
#endif
#else
#include <linux/types.h>
#include <stddef.h>
#ifndef ES_INLINE
#define ES_INLINE static inline
#endif
#endif

#endif
