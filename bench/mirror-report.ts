// The mirror bench's tables, in bench/report.ts's plain fixed-width style: one table of
// ratios (each against its baseline, with the target for wharf), one of the measured values
// the ratios come from.
import { fmt, pct, table } from './report.js';

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
  const body = rows.map((r) => [r.figure, r.unit, fmt(r.wharf, r.digits ?? 2), fmt(r.distribution, r.digits ?? 2), r.baseline ?? '']);
  return table(header, body, new Set([2, 3]));
}
