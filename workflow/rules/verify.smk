# Check a whole results folder before a long run: `snakemake verify --cores 1 [--configfile ...]`. Every finished
# output against the sizes and sha256 its provenance.json records (frpo_workflow.cli.verify); a damaged one is
# listed with the command that rebuilds it. No output: it runs whenever it is asked for, and never otherwise.


rule verify:
    log:
        side("logs", "verify", ".log"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        results=RESULTS,
        options=lambda wc: os.environ.get("FRPO_SNAKEMAKE_OPTIONS", ""),
    shell:
        "python -m frpo_workflow.cli.verify {params.results:q} --options {params.options:q} 2>&1 | tee {log}"
        f" # code {code('cli.verify')}"
