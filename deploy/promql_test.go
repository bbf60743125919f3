package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// A small PromQL scanner: enough to list the metrics a query selects and the
// labels it matches on or groups by. Prometheus's own parser lives in a
// module far too heavy for this test module; whether a query is valid PromQL
// is left to promtool (TestPromtool*), which runs the real parser.

type promqlSelector struct {
	name   string   // metric name ("" if the selector has none)
	labels []string // label names in its matchers, __name__ excluded
}

type promqlRefs struct {
	selectors []promqlSelector
	grouping  []string // labels of by/without/on/ignoring/group_left/group_right
}

type tokenKind int

const (
	tokIdent tokenKind = iota
	tokString
	tokNumber
	tokPunct
)

type token struct {
	kind tokenKind
	text string
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}
func isDigit(c byte) bool     { return c >= '0' && c <= '9' }
func isIdentChar(c byte) bool { return isIdentStart(c) || isDigit(c) }
func isNumberChar(c byte) bool {
	return isDigit(c) || c == '.' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func lexPromQL(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for ; j < len(s) && s[j] != c; j++ {
				if s[j] == '\\' && c != '`' {
					j++
				}
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string at offset %d", i)
			}
			toks = append(toks, token{tokString, s[i+1 : j]})
			i = j + 1
		case isDigit(c) || (c == '.' && i+1 < len(s) && isDigit(s[i+1])):
			// Numbers and durations: 0.8, 1e3, 0x1f, 5m, 1h30m.
			j := i
			for j < len(s) && isNumberChar(s[j]) {
				j++
			}
			toks = append(toks, token{tokNumber, s[i:j]})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			toks = append(toks, token{tokIdent, s[i:j]})
			i = j
		default:
			if i+1 < len(s) {
				switch two := s[i : i+2]; two {
				case "==", "!=", "=~", "!~", ">=", "<=":
					toks = append(toks, token{tokPunct, two})
					i += 2
					continue
				}
			}
			if !strings.ContainsRune("(){}[],=<>+-*/%^@", rune(c)) {
				return nil, fmt.Errorf("unexpected %q at offset %d", c, i)
			}
			toks = append(toks, token{tokPunct, string(c)})
			i++
		}
	}
	return toks, nil
}

var (
	groupingKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	otherKeywords    = []string{"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}
	aggregations     = []string{"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk",
		"bottomk", "count_values", "quantile", "limitk", "limit_ratio"}
)

// promqlReferences lists the selectors and grouping labels of a PromQL
// expression.
func promqlReferences(expr string) (promqlRefs, error) {
	var refs promqlRefs
	toks, err := lexPromQL(expr)
	if err != nil {
		return refs, err
	}
	is := func(i int, kind tokenKind, text string) bool {
		return i < len(toks) && toks[i].kind == kind && toks[i].text == text
	}
	// matchers parses {name op "value", ...} from toks[i] == "{" and returns
	// the index of "}".
	matchers := func(i int, sel *promqlSelector) (int, error) {
		i++
		for !is(i, tokPunct, "}") {
			if i+2 >= len(toks) || toks[i].kind != tokIdent || toks[i+2].kind != tokString ||
				!slices.Contains([]string{"=", "!=", "=~", "!~"}, toks[i+1].text) {
				return 0, fmt.Errorf("malformed label matcher near token %d", i)
			}
			if toks[i].text == "__name__" {
				if toks[i+1].text != "=" {
					return 0, fmt.Errorf("only __name__=\"...\" is supported")
				}
				sel.name = toks[i+2].text
			} else {
				sel.labels = append(sel.labels, toks[i].text)
			}
			i += 3
			if is(i, tokPunct, ",") {
				i++
			} else if !is(i, tokPunct, "}") {
				return 0, fmt.Errorf("expected , or } after a label matcher")
			}
		}
		return i, nil
	}
	depth := 0
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case is(i, tokPunct, "("):
			depth++
		case is(i, tokPunct, ")"):
			depth--
			if depth < 0 {
				return refs, fmt.Errorf("unbalanced )")
			}
		case is(i, tokPunct, "["):
			// A range or subquery: durations only (the lexer reads a
			// subquery's ":1m" as an identifier).
			for i < len(toks) && !is(i, tokPunct, "]") {
				if toks[i].kind == tokIdent && !strings.HasPrefix(toks[i].text, ":") {
					return refs, fmt.Errorf("unexpected %q in [...]", toks[i].text)
				}
				i++
			}
			if i == len(toks) {
				return refs, fmt.Errorf("unterminated [")
			}
		case is(i, tokPunct, "{"):
			var sel promqlSelector
			end, err := matchers(i, &sel)
			if err != nil {
				return refs, err
			}
			if sel.name == "" {
				return refs, fmt.Errorf("selector without a metric name")
			}
			refs.selectors = append(refs.selectors, sel)
			i = end
		case t.kind == tokIdent:
			lower := strings.ToLower(t.text)
			switch {
			case slices.Contains(groupingKeywords, lower):
				if !is(i+1, tokPunct, "(") {
					if lower == "group_left" || lower == "group_right" {
						continue // without a label list
					}
					return refs, fmt.Errorf("%s without a label list", t.text)
				}
				i += 2
				for !is(i, tokPunct, ")") {
					if i >= len(toks) || toks[i].kind != tokIdent {
						return refs, fmt.Errorf("malformed %s (...) list", t.text)
					}
					refs.grouping = append(refs.grouping, toks[i].text)
					i++
					if is(i, tokPunct, ",") {
						i++
					}
				}
			case slices.Contains(otherKeywords, lower):
			case is(i+1, tokPunct, "("):
				// A function or an aggregation: its arguments follow.
			case slices.Contains(aggregations, lower) && i+1 < len(toks) && toks[i+1].kind == tokIdent &&
				slices.Contains([]string{"by", "without"}, strings.ToLower(toks[i+1].text)):
				// sum by (...) (...)
			default:
				sel := promqlSelector{name: t.text}
				if is(i+1, tokPunct, "{") {
					end, err := matchers(i+1, &sel)
					if err != nil {
						return refs, err
					}
					i = end
				}
				refs.selectors = append(refs.selectors, sel)
			}
		}
	}
	if depth != 0 {
		return refs, fmt.Errorf("unbalanced (")
	}
	return refs, nil
}

func TestPromQLReferences(t *testing.T) {
	for _, tc := range []struct {
		expr     string
		want     []string // name{label,label}
		grouping []string
		err      bool
	}{
		{expr: `up`, want: []string{"up{}"}},
		{expr: `up{job=~"(.*/)?forkwatch"} == 0`, want: []string{"up{job}"}},
		{
			expr:     `sum by (node, cause) (rate(forkwatch_fork_failures_total{node=~"$node", cause!="x"}[5m]))`,
			want:     []string{"forkwatch_fork_failures_total{node,cause}"},
			grouping: []string{"node", "cause"},
		},
		{
			expr: "sum by (node) (\n  (a unless a offset 5m)\n  or\n  increase(b[5m])\n) > 0",
			want: []string{"a{}", "a{}", "b{}"}, grouping: []string{"node"},
		},
		{expr: `{__name__="foo", a='b'}`, want: []string{"foo{a}"}},
		{
			expr: `histogram_quantile(0.99, sum by (le, pod) (rate(h_bucket[5m])))`,
			want: []string{"h_bucket{}"}, grouping: []string{"le", "pod"},
		},
		{expr: `max(b) by (node) == bool 1`, want: []string{"b{}"}, grouping: []string{"node"}},
		{
			expr: `a / on (node) group_left (kind) b * ignoring(x) group_right c`,
			want: []string{"a{}", "b{}", "c{}"}, grouping: []string{"node", "kind", "x"},
		},
		{expr: `sum(rate(c[5m:1m] @ end()))`, want: []string{"c{}"}},
		{expr: `count_values("v", d) or vector(0)`, want: []string{"d{}"}},
		{expr: `1e-3 * e > +Inf`, want: []string{"e{}"}},
		{expr: `topk(10, x:rate5m{pod="p"} / (y > 0)) # comment y{z="1"}`, want: []string{"x:rate5m{pod}", "y{}"}},
		{expr: `x{y="z"`, err: true},
		{expr: `x{y=$node}`, err: true},
		{expr: `rate(x[$__rate_interval])`, err: true},
		{expr: `{a="b"}`, err: true},
		{expr: `sum(x`, err: true},
		{expr: `x{y="unterminated}`, err: true},
	} {
		refs, err := promqlReferences(tc.expr)
		if tc.err {
			if err == nil {
				t.Errorf("%q: no error", tc.expr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		var got []string
		for _, s := range refs.selectors {
			got = append(got, s.name+"{"+strings.Join(s.labels, ",")+"}")
		}
		if !slices.Equal(got, tc.want) || !slices.Equal(refs.grouping, tc.grouping) {
			t.Errorf("%q: selectors %v grouping %v, want %v %v", tc.expr, got, refs.grouping, tc.want, tc.grouping)
		}
	}
}
