// The results table: both values, the ratio wharf/Distribution, the relevant physical
// limit, the target and whether it is met. Plain text, fixed-width columns.

export interface Target {
  text: string;
  met: boolean;
}

export interface Row {
  figure: string;
  unit: string;
  wharf?: number;
  distribution?: number;
  /** The physical limit this figure is bounded by, and its name. */
  limit?: number;
  /** (max - min) / median over the rounds, the larger of the two servers'. */
  spread?: number;
  target?: Target;
  /** No ratio column (values too small for a ratio to mean anything). */
  noRatio?: boolean;
  /** Replaces the values (e.g. "n/a: mirror not built yet"). */
  note?: string;
  digits?: number;
}

export interface LimitRow {
  name: string;
  unit: string;
  value: number;
  spread?: number;
  digits?: number;
}

// Shared with bench/mirror-report.ts: both benches print the same table style.
export function fmt(value: number | undefined, digits = 0): string {
  if (value === undefined || Number.isNaN(value)) return '-';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export const pct = (v: number | undefined): string => (v === undefined || Number.isNaN(v) ? '-' : `${Math.round(v * 100)}%`);

export function table(header: string[], rows: string[][], rightAligned: Set<number>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.map(line)].join('\n');
}

export function renderFigures(rows: Row[]): string {
  const header = ['Figure', 'unit', 'wharf', 'Distribution', 'wharf/Dist', 'limit', 'wharf/limit', 'spread', 'target', 'met'];
  const body = rows.map((r) => {
    if (r.note) return [r.figure, r.unit, r.note, '', '', '', '', '', r.target?.text ?? '', ''];
    const ratio = !r.noRatio && r.wharf !== undefined && r.distribution !== undefined ? r.wharf / r.distribution : undefined;
    return [
      r.figure,
      r.unit,
      fmt(r.wharf, r.digits),
      fmt(r.distribution, r.digits),
      ratio === undefined || !Number.isFinite(ratio) ? '-' : `${ratio.toFixed(2)}x`,
      fmt(r.limit, r.digits),
      r.limit !== undefined && r.wharf !== undefined ? pct(r.wharf / r.limit) : '-',
      r.spread === undefined ? '-' : pct(r.spread),
      r.target?.text ?? '',
      r.target ? (r.target.met ? 'yes' : 'NO') : '',
    ];
  });
  return table(header, body, new Set([2, 3, 4, 5, 6, 7]));
}

export function renderLimits(rows: LimitRow[]): string {
  const header = ['Physical limit (same run)', 'unit', 'value', 'spread'];
  const body = rows.map((r) => [r.name, r.unit, fmt(r.value, r.digits), r.spread === undefined ? '-' : pct(r.spread)]);
  return table(header, body, new Set([2, 3]));
}
