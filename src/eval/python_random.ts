/**
 * CPython's `random` module, as far as the authors' evaluation scripts use it: `random.seed(s)`
 * for a small non-negative integer and `random.randint(a, b)`. Their scripts break exact score
 * ties with `random.randint(0, 1)` after `random.seed(0)`, one process per language, so
 * reproducing their numbers bug for bug needs the same stream of draws.
 *
 * The generator is MT19937 (Matsumoto & Nishimura 1998, `mt19937ar.c`), which CPython seeds
 * from an integer through `init_by_array` with the integer's 32-bit words (Modules/_randommodule.c,
 * `random_seed`: the seed 0 is the one-word key [0]). `randint(a, b)` is `a + _randbelow(b - a + 1)`,
 * and `_randbelow(n)` draws `getrandbits(k)` (the top k bits of one 32-bit output, k = bit length
 * of n) until the draw is below n (Lib/random.py, `_randbelow_with_getrandbits`).
 */

const N = 624;
const M = 397;

export class PythonRandom {
  private readonly mt = new Uint32Array(N);
  private index = N;

  /**
   * `random.seed(seed)`.
   * @param seed an integer in [0, 2^32) (one key word; CPython splits larger ones into words)
   * @throws RangeError for any other seed.
   */
  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw new RangeError(`PythonRandom: seed must be an integer in [0, 2^32), got ${seed}`);
    this.initByArray([seed]);
  }

  private initGenrand(s: number): void {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = N;
  }

  private initByArray(key: readonly number[]): void {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(N, key.length); k > 0; k--) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(prev, 1664525)) + key[j]! + j) >>> 0;
      i++;
      j++;
      if (i >= N) {
        mt[0] = mt[N - 1]!;
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = N - 1; k > 0; k--) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) {
        mt[0] = mt[N - 1]!;
        i = 1;
      }
    }
    mt[0] = 0x80000000; // MSB is 1, assuring a non-zero initial array
  }

  /** The next 32-bit output (`genrand_uint32`): a twist every 624 draws, then tempering. */
  uint32(): number {
    const mt = this.mt;
    if (this.index >= N) {
      for (let k = 0; k < N; k++) {
        const y = (mt[k]! & 0x80000000) | (mt[(k + 1) % N]! & 0x7fffffff);
        mt[k] = mt[(k + M) % N]! ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = mt[this.index++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /**
   * `random.randint(a, b)`: an integer in [a, b], both ends included.
   * @throws RangeError unless a <= b and b - a + 1 < 2^32.
   */
  randint(a: number, b: number): number {
    const n = b - a + 1;
    if (!Number.isInteger(a) || !Number.isInteger(b) || n < 1 || n >= 2 ** 32) throw new RangeError(`PythonRandom.randint: need integers a <= b with b - a < 2^32 - 1, got ${a}, ${b}`);
    const k = Math.floor(Math.log2(n)) + 1; // n.bit_length()
    let r = this.uint32() >>> (32 - k);
    while (r >= n) r = this.uint32() >>> (32 - k);
    return a + r;
  }
}
