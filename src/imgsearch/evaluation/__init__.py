"""`imgsearch eval`: retrieval quality measured through the service that answers the API.

On a labelled folder (relevant = same label) it measures
1. similar images by layer and distance, exact (`similar`),
2. the production index and stored neighbourhoods against exact search (`similar`),
3. keyword search with each label as the query (`keyword`),
4. relevance feedback with a simulated user (`simulated_user`),
and reports them beside the original study's numbers (`report`, `plots`). See
docs/evaluation.md.
"""

PAGE = 20  # results per query, as a page of the web app shows them
DEPTH = 50  # results per query for the precision@k curves


class EvaluationError(ValueError):
    """The evaluation cannot run as asked: bad labels, nothing to evaluate, a missing method."""
