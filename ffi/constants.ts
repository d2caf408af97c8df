/**
 * Linux x86_64 constants used with the libc symbol table.
 *
 * @module
 */

/** Page protection bits for mmap/mprotect. */
export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;

/** fallocate modes. */
export const FALLOC = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02 } as const;

/** mmap flags. */
export const MAP = {
  SHARED: 0x01,
  PRIVATE: 0x02,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  NORESERVE: 0x4000,
  POPULATE: 0x8000,
  FIXED_NOREPLACE: 0x100000,
} as const;

/** madvise advice values. */
export const MADV = {
  NORMAL: 0,
  WILLNEED: 3,
  DONTNEED: 4,
  REMOVE: 9,
  DONTFORK: 10,
  DODUMP: 17,
  DONTDUMP: 16,
  POPULATE_READ: 22,
  POPULATE_WRITE: 23,
} as const;

/** fcntl(2) commands. */
export const F = { DUPFD_CLOEXEC: 1030 } as const;

/** mremap(2) flags. */
export const MREMAP = {
  MAYMOVE: 1,
  FIXED: 2,
  /** Leave the old range mapped, empty (Linux 5.7+; private mappings of any kind since 5.13). */
  DONTUNMAP: 4,
} as const;

/** open(2) flags. */
export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  CREAT: 0o100,
  EXCL: 0o200,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DIRECTORY: 0o200000,
  CLOEXEC: 0o2000000,
  /** An unnamed file in the given directory (includes `O_DIRECTORY`); `linkat` can name it later. */
  TMPFILE: 0o20200000,
} as const;

/** `*at()` call values: the current directory as a dirfd, and `linkat`'s follow flag. */
export const AT = { FDCWD: -100, SYMLINK_FOLLOW: 0x400 } as const;

/** lseek whence values. */
export const SEEK = { SET: 0, CUR: 1, END: 2, DATA: 3, HOLE: 4 } as const;

/** Signals by number. */
export const SIG = {
  HUP: 1,
  INT: 2,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  TERM: 15,
  CHLD: 17,
  CONT: 18,
  STOP: 19,
  TRAP: 5,
} as const;

/** waitpid options. */
export const WAIT = { NOHANG: 1, UNTRACED: 2, CONTINUED: 8, ALL: 0x40000000 } as const;

/** The MAP_FAILED sentinel mmap returns, as an address. */
export const MAP_FAILED = 0xffffffffffffffffn;
