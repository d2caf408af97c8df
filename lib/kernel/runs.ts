/**
 * Runs of pages: `[start, end)` ranges of consecutive pages that hold data, and the builder both page-scan paths
 * use to merge them without a bigint per page or per run.
 *
 * @module
 */

/** A run of consecutive pages that hold data: `[start, end)`, page aligned. */
export interface PageRun {
  /** First address. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
}

/**
 * Sorted runs built from addresses held as numbers (user addresses are below 2^47, exact in a double), merging a
 * run into the last one when they touch or overlap. Output: a `BigUint64Array` of `[start, end)` pairs, written
 * through a `Uint32Array` view so no bigint is created per run.
 */
export class RunBuilder {
  #pairs = new Float64Array(256);
  #n = 0; // numbers used (2 per run)

  /**
   * Add the run `[s, e)`, at or after every run added before (it may overlap or touch the last one).
   *
   * @param s First address.
   * @param e One past the last address.
   */
  add(s: number, e: number): void {
    const p = this.#pairs;
    const n = this.#n;
    if (n > 0 && s <= p[n - 1]) {
      if (e > p[n - 1]) p[n - 1] = e;
      return;
    }
    if (n === p.length) {
      const bigger = new Float64Array(p.length * 2);
      bigger.set(p);
      this.#pairs = bigger;
    }
    this.#pairs[n] = s;
    this.#pairs[n + 1] = e;
    this.#n = n + 2;
  }

  /** Forget the runs added, keeping the buffer: a builder reused for many scans makes no garbage. */
  clear(): void {
    this.#n = 0;
  }

  /**
   * The runs added, merged, as numbers: a view of the builder's buffer, valid until it is added to or cleared.
   *
   * @returns `[start0, end0, start1, end1, …]`.
   */
  numbers(): Float64Array {
    return this.#pairs.subarray(0, this.#n);
  }

  /**
   * The runs added, merged.
   *
   * @returns `[start0, end0, start1, end1, …]`.
   */
  finish(): BigUint64Array {
    const out = new BigUint64Array(this.#n);
    const w = new Uint32Array(out.buffer);
    for (let k = 0; k < this.#n; k++) {
      const x = this.#pairs[k];
      const hi = Math.floor(x / 4294967296);
      w[2 * k] = x - hi * 4294967296;
      w[2 * k + 1] = hi;
    }
    return out;
  }
}

/**
 * `PageRun` objects from `[start, end)` pairs.
 *
 * @param pairs `[start0, end0, start1, end1, …]`.
 * @returns One object per run.
 */
export function toRuns(pairs: BigUint64Array): PageRun[] {
  const runs = new Array<PageRun>(pairs.length / 2);
  for (let k = 0; k < runs.length; k++) runs[k] = { start: pairs[2 * k], end: pairs[2 * k + 1] };
  return runs;
}
