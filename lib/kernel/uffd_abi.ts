/**
 * The userfaultfd ABI (linux/userfaultfd.h) and the system call numbers around it, in one place for the
 * capability probe and the userfaultfd wrapper.
 *
 * @module
 */

/** `userfaultfd(2)`, `pidfd_open(2)`, `pidfd_getfd(2)` on x86_64. */
export const SYS_USERFAULTFD = 323n;
/** `pidfd_open(2)`. */
export const SYS_PIDFD_OPEN = 434n;
/** `pidfd_getfd(2)`. */
export const SYS_PIDFD_GETFD = 438n;
/** `userfaultfd(2)` flag: handle only faults taken in user mode. */
export const UFFD_USER_MODE_ONLY = 1;
/** `O_CLOEXEC` for `userfaultfd(2)` flags. */
export const O_CLOEXEC = 0o2000000;
/** `O_NONBLOCK` for `userfaultfd(2)` flags. */
export const O_NONBLOCK = 0o4000;
/** The API version `UFFDIO_API` takes. */
export const UFFD_API = 0xaan;
/** `ioctl` requests. */
export const UFFDIO = {
  API: 0xc018aa3fn,
  REGISTER: 0xc020aa00n,
  UNREGISTER: 0x8010aa01n,
  WAKE: 0x8010aa02n,
  COPY: 0xc028aa03n,
  ZEROPAGE: 0xc020aa04n,
  WRITEPROTECT: 0xc018aa06n,
} as const;
