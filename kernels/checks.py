"""Input checks every path of an op shares, so that the reference and the kernels refuse the same
bad input with the same message (kernels/__init__.py calls them before it picks a path; the
kernels call them too, for callers that reach them directly)."""


def check_views(student_views, teacher_views) -> None:
    """The MCR loss's inputs: 2 student and 2 teacher views of one (m, p) shape, m, p >= 1, one device."""
    views = tuple(student_views) + tuple(teacher_views)
    if len(student_views) != 2 or len(teacher_views) != 2:
        raise ValueError(f"expected 2 student and 2 teacher views, got {len(student_views)} and {len(teacher_views)}")
    shape = views[0].shape
    if len(shape) != 2 or any(v.shape != shape for v in views):
        raise ValueError(f"all views must share one (m, p) shape, got {[tuple(v.shape) for v in views]}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"mcr_loss needs at least one row and one column, got views of shape {tuple(shape)}")
    if len({v.device for v in views}) != 1:
        raise ValueError("student and teacher views are on different devices")
