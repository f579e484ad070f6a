/** A clock tests move by hand, for code that takes `now: () => number` (milliseconds). */
export function manualClock(startMs: number) {
  let nowMs = startMs;
  return {
    now: () => nowMs,
    advance: (ms: number) => {
      nowMs += ms;
    },
    get ms() {
      return nowMs;
    },
  };
}
