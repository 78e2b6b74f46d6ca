package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// Metric is one measured figure.
type Metric struct {
	Name         string  `json:"name"`
	Unit         string  `json:"unit"`
	Value        float64 `json:"value"`
	HigherBetter bool    `json:"higher_better"`
	Detail       bool    `json:"detail,omitempty"` // in JSON only, not in the table
}

// Result is one scenario run against one server.
type Result struct {
	Scenario string `json:"scenario"`
	Server   string `json:"server"`
	// Variant is one size of a scenario run at several (joinstorm with
	// --joinstorm-conns 1000,5000,15000): VariantKey names the parameter
	// ("conns"), Variant its value here. Rows of one variant are compared with
	// the NATS row of the same variant; the table shows it in a column of its own.
	VariantKey string            `json:"variant_key,omitempty"`
	Variant    string            `json:"variant,omitempty"`
	Params     map[string]string `json:"params"`
	Primary    Metric            `json:"primary"`
	Metrics    []Metric          `json:"metrics"`
	Delivery   Delivery          `json:"delivery"`
	Errors     []string          `json:"errors,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
	// VsNATS is how many times better than NATS the primary metric is (> 1:
	// better), 0 when there is no NATS row to compare with.
	VsNATS float64 `json:"vs_nats,omitempty"`
	// VsNATSRaw is the same against the nats-raw row (the NATS server driven
	// by a hand-written client, so that nats.go's own costs are not counted).
	VsNATSRaw float64 `json:"vs_nats_raw,omitempty"`
	Failed    string  `json:"failed,omitempty"` // the scenario could not run

	// Baseline is the same scenario measured, in the same run, on the
	// baseline topology (peerfan: one server instead of two peered ones).
	// Run lists it as a result of its own, in the row above this one.
	Baseline *Result `json:"-"`
}

// Bad reports whether the delivery of r or of its baseline went wrong.
func (r *Result) Bad() bool {
	return r.Delivery.Bad() || (r.Baseline != nil && r.Baseline.Delivery.Bad())
}

// Metric returns the metric called name, if r has it.
func (r *Result) Metric(name string) (Metric, bool) {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// Add appends a metric.
func (r *Result) Add(name, unit string, v float64, higherBetter bool) {
	r.Metrics = append(r.Metrics, Metric{Name: name, Unit: unit, Value: v, HigherBetter: higherBetter})
}

// AddDetail appends a metric that only the JSON output shows.
func (r *Result) AddDetail(name, unit string, v float64, higherBetter bool) {
	r.Metrics = append(r.Metrics, Metric{Name: name, Unit: unit, Value: v, HigherBetter: higherBetter, Detail: true})
}

// SetPrimary appends a metric and makes it the one compared across servers.
func (r *Result) SetPrimary(name, unit string, v float64, higherBetter bool) {
	r.Primary = Metric{Name: name, Unit: unit, Value: v, HigherBetter: higherBetter}
	r.Add(name, unit, v, higherBetter)
}

// Ratio is how many times better a is than b on a metric (> 1: a is better).
func Ratio(a, b Metric) float64 {
	if a.Value <= 0 || b.Value <= 0 || math.IsNaN(a.Value) || math.IsNaN(b.Value) {
		return 0
	}
	if a.HigherBetter {
		return a.Value / b.Value
	}
	return b.Value / a.Value
}

// FillRatios sets VsNATS (and VsNATSRaw) on every result that has a nats
// (nats-raw) row in its scenario and variant.
func FillRatios(rs []*Result) {
	nats, raw := map[string]*Result{}, map[string]*Result{}
	key := func(r *Result) string { return r.Scenario + "\x00" + r.Variant }
	for _, r := range rs {
		if r.Failed != "" {
			continue
		}
		switch r.Server {
		case "nats":
			nats[key(r)] = r
		case "nats-raw":
			raw[key(r)] = r
		}
	}
	for _, r := range rs {
		if r.Failed != "" {
			continue
		}
		if n, ok := nats[key(r)]; ok {
			r.VsNATS = Ratio(r.Primary, n.Primary)
		}
		if n, ok := raw[key(r)]; ok {
			r.VsNATSRaw = Ratio(r.Primary, n.Primary)
		}
	}
}

// commonParams is the parameters every row that ran has with the same value
// (a variant's own parameter differs from row to row and is left out).
func commonParams(rows []*Result) map[string]string {
	var out map[string]string
	for _, r := range rows {
		if r.Failed != "" {
			continue
		}
		if out == nil {
			out = map[string]string{}
			for k, v := range r.Params {
				out[k] = v
			}
			continue
		}
		for k, v := range out {
			if r.Params[k] != v {
				delete(out, k)
			}
		}
	}
	return out
}

// FormatValue prints v in a unit-appropriate way.
func FormatValue(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case unit == "s":
		switch a := math.Abs(v); {
		case a < 1e-3:
			return fmt.Sprintf("%.1fµs", v*1e6)
		case a < 1:
			return fmt.Sprintf("%.2fms", v*1e3)
		default:
			return fmt.Sprintf("%.3fs", v)
		}
	case v >= 1e9:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteTable prints one table for scenario: one row per server, the scenario's
// metrics as columns, then delivery counters and the ratio against NATS.
func WriteTable(w io.Writer, scenario string, rs []*Result) { writeTable(w, scenario, rs, false) }

// WriteMarkdown prints the same table as WriteTable in Markdown.
func WriteMarkdown(w io.Writer, scenario string, rs []*Result) { writeTable(w, scenario, rs, true) }

func writeTable(w io.Writer, scenario string, rs []*Result, md bool) {
	var rows []*Result
	var cols []Metric
	variantKey := ""
	for _, r := range rs {
		if r.Scenario != scenario {
			continue
		}
		rows = append(rows, r)
		if r.VariantKey != "" {
			variantKey = r.VariantKey
		}
		if r.Failed != "" {
			continue
		}
		// Columns: every row's metrics, in order; one that only a later row
		// has goes right after the metric it follows there.
		at := -1
		for _, m := range r.Metrics {
			if m.Detail {
				continue
			}
			i := slices.IndexFunc(cols, func(c Metric) bool { return c.Name == m.Name })
			if i < 0 {
				i = at + 1
				cols = slices.Insert(cols, i, m)
			}
			at = i
		}
	}
	if len(rows) == 0 {
		return
	}
	title := scenario
	if params := commonParams(rows); len(params) > 0 {
		title += " (" + formatParams(params) + ")"
	}
	hdr := []string{"server"}
	if variantKey != "" {
		hdr = append(hdr, variantKey)
	}
	for _, c := range cols {
		h := c.Name
		if c.Unit != "" && c.Unit != "s" {
			h += " (" + c.Unit + ")"
		}
		hdr = append(hdr, h)
	}
	checked := false // does any row carry deliveries to check?
	hasRaw := false
	for _, r := range rows {
		checked = checked || r.Delivery.Expected > 0 || r.Delivery.Bad()
		hasRaw = hasRaw || r.Server == "nats-raw"
	}
	if checked {
		hdr = append(hdr, "lost", "dup", "reord")
	}
	// No ratio column where no NATS row can be (mlesd-only scenarios).
	ratios := Supports(scenario, "nats")
	hdr = append(hdr, "errors")
	if ratios {
		hdr = append(hdr, "×NATS")
	}
	if hasRaw {
		hdr = append(hdr, "×NATS-raw")
	}
	var lines [][]string
	for _, r := range rows {
		cells := []string{r.Server}
		if variantKey != "" {
			cells = append(cells, r.Variant)
		}
		if r.Failed != "" {
			for range cols {
				cells = append(cells, "-")
			}
			if checked {
				cells = append(cells, "-", "-", "-")
			}
			cells = append(cells, "FAILED")
			if ratios {
				cells = append(cells, "-")
			}
			if hasRaw {
				cells = append(cells, "-")
			}
			lines = append(lines, cells)
			continue
		}
		for _, c := range cols {
			v := math.NaN()
			for _, m := range r.Metrics {
				if m.Name == c.Name {
					v = m.Value
				}
			}
			cells = append(cells, FormatValue(v, c.Unit))
		}
		if checked {
			d := r.Delivery
			cells = append(cells, fmt.Sprint(d.Lost), fmt.Sprint(d.Dup), fmt.Sprint(d.Reordered+d.TooLate))
		}
		cells = append(cells, fmt.Sprint(len(r.Errors)))
		if ratios {
			cells = append(cells, ratioCell(r.VsNATS))
		}
		if hasRaw {
			cells = append(cells, ratioCell(r.VsNATSRaw))
		}
		lines = append(lines, cells)
	}
	var notes []string
	for _, r := range rows {
		who := r.Server
		if r.Variant != "" {
			who += " (" + r.VariantKey + "=" + r.Variant + ")"
		}
		if r.Failed != "" {
			notes = append(notes, fmt.Sprintf("%s FAILED: %s", who, firstLine(r.Failed)))
		}
		for _, e := range r.Errors {
			notes = append(notes, fmt.Sprintf("%s error: %s", who, e))
		}
		for _, n := range r.Notes {
			notes = append(notes, fmt.Sprintf("%s note: %s", who, n))
		}
		if r.Delivery.Bad() {
			notes = append(notes, LossLine(r))
		}
	}
	if len(cols) > 0 && ratios {
		same := ""
		if variantKey != "" {
			same = " at the same " + variantKey
		}
		notes = append(notes, fmt.Sprintf("×NATS compares %s (%s)%s; > 1 means better than NATS.", cols0(rows).Name, direction(cols0(rows)), same))
		if hasRaw {
			notes = append(notes, "×NATS-raw: the same against nats-server driven by a hand-written client (no nats.go costs).")
		}
	}
	if md {
		fmt.Fprintf(w, "\n### %s\n\n", title)
		fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(hdr, " | "), strings.Repeat(" ---: |", len(hdr)))
		for _, l := range lines {
			fmt.Fprintf(w, "| %s |\n", strings.Join(l, " | "))
		}
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		return
	}
	fmt.Fprintf(w, "\n== %s\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\t")
	for _, l := range lines {
		fmt.Fprintln(tw, strings.Join(l, "\t")+"\t")
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
}

func ratioCell(v float64) string {
	if v > 0 {
		return fmt.Sprintf("%.2f", v)
	}
	return "-"
}

func cols0(rows []*Result) Metric {
	for _, r := range rows {
		if r.Failed == "" {
			return r.Primary
		}
	}
	return Metric{}
}

func direction(m Metric) string {
	if m.HigherBetter {
		return "higher is better"
	}
	return "lower is better"
}

// LossLine is the loud line printed for a run whose delivery went wrong.
func LossLine(r *Result) string {
	d := r.Delivery
	scn := r.Scenario
	if r.Variant != "" {
		scn += " " + r.VariantKey + "=" + r.Variant
	}
	return fmt.Sprintf("!!! LOSS !!! %s/%s: lost %d, duplicated %d, reordered %d, too late %d of %d expected",
		r.Server, scn, d.Lost, d.Dup, d.Reordered, d.TooLate, d.Expected)
}

func formatParams(p map[string]string) string {
	var keys []string
	for k := range p {
		keys = append(keys, k)
	}
	sortStrings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+p[k])
	}
	return strings.Join(parts, " ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// WriteJSON writes the results as one JSON document.
func WriteJSON(w io.Writer, env map[string]string, rs []*Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Environment map[string]string `json:"environment"`
		Results     []*Result         `json:"results"`
	}{env, rs})
}
