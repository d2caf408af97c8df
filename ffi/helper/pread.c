// Many scattered reads of one file in one call: a tracked rollback reads back only the pages written since its
// image was taken, a few thousand pieces at scattered offsets of a large image, and one FFI call per `pread`
// (its arguments converted each time) costs more than the read of a cached page itself.
#include "helper.h"

#include <errno.h>
#include <unistd.h>

// ops holds n triples (local address, length, file offset). Read each with pread, resuming after a short read.
// Returns n; or -errno, with *failed the index of the piece that failed (-EIO: the file ended before it did).
long cryo_pread_many(int fd, const uint64_t *ops, size_t n, uint64_t *failed) {
  for (size_t i = 0; i < n; i++) {
    unsigned char *dst = (unsigned char *)(uintptr_t)ops[3 * i];
    size_t len = (size_t)ops[3 * i + 1], done = 0;
    off_t at = (off_t)ops[3 * i + 2];
    while (done < len) {
      ssize_t r = pread(fd, dst + done, len - done, at + (off_t)done);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        *failed = i;
        return r < 0 ? -errno : -EIO;
      }
      done += (size_t)r;
    }
  }
  return (long)n;
}
