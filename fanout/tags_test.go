package fanout

import "testing"

func TestMergeTagsSumsRowCounts(t *testing.T) {
	cases := []struct {
		tags []string
		want string
	}{
		{[]string{"SELECT 3", "SELECT 4"}, "SELECT 7"},
		{[]string{"INSERT 0 2", "INSERT 0 5"}, "INSERT 0 7"},
		{[]string{"UPDATE 0", "UPDATE 1", "UPDATE 2"}, "UPDATE 3"},
		{[]string{"DELETE 1", "DELETE 0"}, "DELETE 1"},
		{[]string{"BEGIN", "BEGIN"}, "BEGIN"},
		{[]string{"SELECT 1", "UPDATE 2"}, "SELECT 1"}, // different statements: the first leg's
		{[]string{"", ""}, ""},
		{[]string{"SELECT 18446744073709551615", "SELECT 0"}, "SELECT 18446744073709551615"},
	}
	for _, c := range cases {
		var in [][]byte
		for _, s := range c.tags {
			in = append(in, append([]byte(s), 0))
		}
		got := mergeTags(in)
		if string(got) != c.want+"\x00" {
			t.Errorf("mergeTags(%q) = %q, want %q", c.tags, got, c.want)
		}
	}
}
