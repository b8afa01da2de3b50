package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompareFindsDifferences(t *testing.T) {
	g := func(uid string) stateKey { return stateKey{uid: uid, metric: metricGrant, field: "u", grant: true} }
	c := func(uid, res string) stateKey {
		return stateKey{uid: uid, metric: metricCounter, field: "resource=" + res}
	}
	expected := map[stateKey]float64{
		g("u1"): 10, g("u2"): 5, g("u3"): 7,
		c("u1", "photo"): 3, c("u2", "album"): 4,
	}
	uncertain := map[stateKey]float64{g("u3"): 2}
	actual := map[stateKey]float64{
		g("u1"):          10, // exact
		g("u2"):          4,  // one lost
		g("u3"):          9,  // within what is uncertain
		c("u1", "photo"): 6,  // counted twice
		// c("u2", "album") missing altogether: lost
		c("u9", "list"): 1, // never sent
	}
	diffs, lost, double := compare(expected, uncertain, actual)
	var got []string
	for _, d := range diffs {
		got = append(got, d.String())
	}
	want := []string{
		"counter api_calls_total{resource=album} of u2: sent 4.00, Redis holds 0: 4.00 lost",
		"counter api_calls_total{resource=list} of u9: sent 0, Redis holds 1.00: 1.00 double-counted",
		"counter api_calls_total{resource=photo} of u1: sent 3.00, Redis holds 6.00: 3.00 double-counted",
		"grant photo_daily_total of u2: sent 5.00, Redis holds 4.00: 1.00 lost",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("differences (-want +got):\n%s", d)
	}
	if lost != 5 || double != 4 {
		t.Errorf("lost %v double %v, want 5 and 4", lost, double)
	}
	// Beyond the uncertain band is double counting.
	actual[g("u3")] = 10
	diffs, _, double = compare(expected, uncertain, actual)
	if len(diffs) != 5 || double != 5 || !strings.Contains(diffs[4].String(), "up to 2.00 more allowed") {
		t.Errorf("over the band: %d diffs, double %v, last %v", len(diffs), double, diffs[len(diffs)-1])
	}
	if diffs, lost, double := compare(expected, nil, expected); len(diffs) != 0 || lost != 0 || double != 0 {
		t.Errorf("equal states: %v %v %v, want no difference", diffs, lost, double)
	}
}
