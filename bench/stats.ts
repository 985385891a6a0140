// Per-round samples and their summaries.

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** (max - min) / median: how much the rounds disagree. */
export function spread(values: number[]): number {
  if (values.length < 2) return 0;
  const m = median(values);
  return m === 0 ? 0 : (Math.max(...values) - Math.min(...values)) / m;
}

/** Samples by key ("push-mono/wharf", "limit/sha256", ...). */
export class Samples {
  private readonly values = new Map<string, number[]>();

  add(key: string, value: number): void {
    const list = this.values.get(key);
    if (list) list.push(value);
    else this.values.set(key, [value]);
  }

  get(key: string): number[] {
    return this.values.get(key) ?? [];
  }

  median(key: string): number {
    return median(this.get(key));
  }

  max(key: string): number {
    const list = this.get(key);
    return list.length ? Math.max(...list) : Number.NaN;
  }

  toJSON(): Record<string, number[]> {
    return Object.fromEntries(this.values);
  }
}
