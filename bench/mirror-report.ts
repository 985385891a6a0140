// The mirror bench's tables, in bench/report.ts's plain fixed-width style: one table of
// ratios (each against its baseline, with the target for wharf), one of the measured values
// the ratios come from.

/** One side of a row: a value, or why there is none (a failed measurement). */
export interface Cell {
  value?: number;
  /** (max - min) / median over the rounds. */
  spread?: number;
  /** Why there is no value: "FAILED: HTTP 500 ...". */
  failed?: string;
}

export interface RatioRow {
  figure: string;
  /** 'x' for ratios, or a unit shown after the value (MB). */
  unit: string;
  wharf: Cell;
  distribution: Cell;
  digits?: number;
  /** The target for wharf's value, and whether it is met (undefined: no target). */
  target?: { text: string; met: boolean };
}

export interface ValueRow {
  figure: string;
  unit: string;
  wharf?: number;
  distribution?: number;
  /** The baseline the ratio divides by, per contestant when they differ ("wharf / Dist"). */
  baseline?: string;
  digits?: number;
}

function fmt(value: number | undefined, digits = 2): string {
  if (value === undefined || Number.isNaN(value)) return '-';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const pct = (v: number | undefined): string => (v === undefined || Number.isNaN(v) ? '-' : `${Math.round(v * 100)}%`);

function table(header: string[], rows: string[][], rightAligned: Set<number>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.map(line)].join('\n');
}

function cell(c: Cell, unit: string, digits: number): string {
  if (c.failed !== undefined) return c.failed;
  if (c.value === undefined || Number.isNaN(c.value)) return '-';
  return unit === 'x' ? `${fmt(c.value, digits)}x` : `${fmt(c.value, digits)} ${unit}`;
}

export function renderRatios(rows: RatioRow[]): string {
  const header = ['Figure', 'wharf', 'Distribution', 'spread', 'target (wharf)', 'met'];
  const body = rows.map((r) => {
    const spreads = [r.wharf.spread, r.distribution.spread].filter((s): s is number => s !== undefined);
    return [
      r.figure,
      cell(r.wharf, r.unit, r.digits ?? 2),
      cell(r.distribution, r.unit, r.digits ?? 2),
      spreads.length ? pct(Math.max(...spreads)) : '-',
      r.target?.text ?? '',
      r.target ? (r.target.met ? 'yes' : 'NO') : '',
    ];
  });
  return table(header, body, new Set([1, 2, 3]));
}

export function renderValues(rows: ValueRow[]): string {
  const header = ['Measured (median over rounds)', 'unit', 'wharf', 'Distribution', 'baseline'];
  const body = rows.map((r) => [r.figure, r.unit, fmt(r.wharf, r.digits), fmt(r.distribution, r.digits), r.baseline ?? '']);
  return table(header, body, new Set([2, 3]));
}
