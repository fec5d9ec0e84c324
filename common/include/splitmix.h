/* nbdsrv: the splitmix64 generator (Steele, Lea, Flood 2014), for the
 * plugins whose disks are made of reproducible pseudo-random bytes.
 *
 * The state only ever advances by a constant, so the value at any
 * position of a stream is computed directly: a disk of any size needs
 * no stored data, and any range of it can be produced on demand.
 */
#ifndef NBDSRV_SPLITMIX_H
#define NBDSRV_SPLITMIX_H

#include <stdint.h>

/* 2^64 divided by the golden ratio, the step between states. */
#define SPLITMIX_GOLDEN UINT64_C (0x9e3779b97f4a7c15)

/* The output function: a bijective 64-bit mixer with good avalanche,
 * cheap enough to run once per 8 bytes of disk.
 */
static inline uint64_t
splitmix_mix (uint64_t x)
{
  x = (x ^ (x >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C (0x94d049bb133111eb);
  return x ^ (x >> 31);
}

/* Advance *STATE by one step and return the next value. */
static inline uint64_t
splitmix_next (uint64_t *state)
{
  *state += SPLITMIX_GOLDEN;
  return splitmix_mix (*state);
}

/* Fill BUF with bytes [OFFSET, OFFSET+COUNT) of the stream of words
 * mix(KEY + i * GOLDEN), word i being bytes 8*i .. 8*i+7 stored little
 * endian, so the bytes do not depend on the host.
 */
static inline void
splitmix_fill (unsigned char *buf, uint32_t count, uint64_t offset,
               uint64_t key)
{
  uint64_t w, word = offset / 8;
  unsigned skip = offset % 8, i;

  while (count > 0) {
    w = splitmix_mix (key + word++ * SPLITMIX_GOLDEN);
    for (i = skip; i < 8 && count > 0; ++i, --count)
      *buf++ = w >> (8 * i);
    skip = 0;
  }
}

#endif /* NBDSRV_SPLITMIX_H */
