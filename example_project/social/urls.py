from django.urls import path

from social import views

app_name = "social"

urlpatterns = [
    path("", views.latest_posts, name="latest"),
    path("@<int:author_id>/", views.profile, name="profile"),
    path("@<int:author_id>/posts/", views.author_posts, name="posts"),
    path("@<int:author_id>/new/", views.new_post, name="new_post"),
    path("find/", views.find_author, name="find_author"),
]
