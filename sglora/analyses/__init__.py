"""What a run reports: tables, figures, premises, novelty, studies, the results page."""
