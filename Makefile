# Convenience targets; the README's commands are the reference.
.PHONY: test testbed test-testbed demo fixtures bench bench-tools

test:  ## the whole suite (what CI runs after installing)
	./scripts/test

demo:  ## the README's first command
	rstscope analyze examples/demo.pcap

fixtures:  ## remake the real-capture fixtures (root; several minutes)
	python3 scripts/make_fixtures.py --out tests/fixtures && python3 scripts/make_demo.py

testbed:  ## real-network tampering bed (root): captures, labels, per-signature report
	python3 scripts/testbed.py --out testbed-out

test-testbed:
	python3 -m pytest -q -p no:cacheprovider -m realnet tests/testbed

bench:  ## every performance goal beside its peer in one table (analyze vs argus, worker vs Faust, edge vs raw producer, memory)
	command -v argus >/dev/null && command -v tshark >/dev/null && command -v ab >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q argus-server tshark apache2-utils)
	python3 -m pip install -q nfstream
	[ -f .cache/bench.pcap ] || bench/make_capture.sh .cache/bench.pcap
	python3 bench/bench_all.py --capture .cache/bench.pcap --runs 5

bench-tools:  ## analyze vs tcpdump, argus, tshark, nfstream (the detailed table)
	[ -f .cache/bench.pcap ] || bench/make_capture.sh .cache/bench.pcap
	python3 bench/bench_analyze.py .cache/bench.pcap --runs 3

.PHONY: faults soak
faults:  ## the fault tests as CI runs them (real 3-broker cluster)
	python3 -m pytest tests/faults -m faults -q -p no:cacheprovider

soak:  ## 10 random worker kills; 10 mixed runs (edge, worker and broker kills; RSTSCOPE_SOAK_SEED replays one); 1,000,000 inputs per fuzz target under atheris; figures in soak-report.jsonl
	python3 -m pip install -q atheris
	rm -f soak-report.jsonl
	RSTSCOPE_FAULT_RUNS=10 RSTSCOPE_SOAK_RUNS=10 RSTSCOPE_FUZZ_INPUTS=1000000 RSTSCOPE_FAULTS_REPORT=soak-report.jsonl \
	  python3 -m pytest tests/faults -m faults -q -p no:cacheprovider
