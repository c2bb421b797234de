package proxy

import "testing"

func TestReclaimerSchedulesOneCheckAtATimeAndNoneOnceStopped(t *testing.T) {
	var r reclaimer
	r.dormant()
	first := r.timer
	if first == nil {
		t.Fatal("a dormancy scheduled no check")
	}
	r.dormant()
	if r.timer != first {
		t.Fatal("a second dormancy scheduled a second check")
	}
	r.stop()
	r.stop()
	r.dormant()
	if r.timer != nil {
		t.Fatal("a dormancy after stop scheduled a check")
	}
}
