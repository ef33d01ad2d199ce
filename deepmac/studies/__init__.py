"""The paper's tables as one-command studies (``deepmac study TABLE``): the table
definitions, the runner that trains and scores every row and seed, and the report."""

from deepmac.studies.runner import StudyData, run_study
from deepmac.studies.tables import STUDIES, Row, Study, get_study

__all__ = ["STUDIES", "Row", "Study", "StudyData", "get_study", "run_study"]
